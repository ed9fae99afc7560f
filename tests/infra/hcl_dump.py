"""Print every infra/*.tf file as JSON: {file name: parsed HCL}.

Run by conftest.py with the infra tools' Python (scripts/infra_checks.sh),
whose bc-python-hcl2 parses HCL; the test process itself need not have it.
"""

import json
import pathlib
import sys

import hcl2

infra = pathlib.Path(sys.argv[1])
out = {}
for path in sorted(infra.glob("*.tf")):
    out[path.name] = hcl2.loads(path.read_text())
json.dump(out, sys.stdout)
