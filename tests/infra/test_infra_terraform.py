"""Static checks of infra/: formatting and checkov, with skips only inline and explained."""

import json
import re
import shutil
import subprocess

from infra_support import INFRA, tool


def test_terraform_fmt_check():
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH (see scripts/infra_checks.sh)"
    proc = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def test_checkov_has_no_failed_check():
    proc = subprocess.run(
        [str(tool("checkov")), "-d", str(INFRA), "--framework", "terraform",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, check=False,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c["file_path"])
              for r in reports for c in r["results"]["failed_checks"]]
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    assert not failed, f"checkov failed checks: {failed}"
    assert passed > 50, "checkov ran but checked almost nothing"
    # Every skip checkov honoured is one of the inline, explained skips below.
    skipped = {c["check_id"] for r in reports for c in r["results"]["skipped_checks"]}
    assert skipped == {check for check, _ in inline_skips()}


def inline_skips():
    skips = []
    for path in sorted(INFRA.rglob("*.tf")):
        for line in path.read_text().splitlines():
            m = re.search(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", line)
            if m:
                skips.append((m.group(1), (m.group(2) or "").strip()))
    return skips


def test_every_checkov_skip_is_inline_with_a_reason():
    skips = inline_skips()
    assert skips, "expected the known, explained skips"
    for check, reason in skips:
        assert len(reason.split()) >= 5, f"{check}: a skip needs its reason beside it"
    # No skip through a config file or the command line: only inline ones.
    for name in (".checkov.yaml", ".checkov.yml"):
        assert not (INFRA / name).exists() and not (INFRA.parent / name).exists()
