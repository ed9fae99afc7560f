"""The functions infra/ and cloudbuild.yaml deploy exist, import, and agree.

Parametrized over every function either file names: a function that is
referenced but missing from functions/ fails here.
"""

import subprocess
import sys

import pytest

from infra_support import ROOT, attr, function_deploys, load_cloudbuild, load_terraform

TF_FUNCTIONS = load_terraform().local("functions")
CB_DEPLOYS = function_deploys(load_cloudbuild())

# Folder (= entry point name) of every function referenced anywhere.
REFERENCED = sorted(
    set(TF_FUNCTIONS)
    | {spec["entry_point"] for spec in TF_FUNCTIONS.values()}
    | {flags["--entry-point"] for flags in CB_DEPLOYS.values()}
    | {flags["--source"].rsplit("/", 1)[-1] for flags in CB_DEPLOYS.values()}
)

INGRESS = {"ALLOW_INTERNAL_ONLY": "internal-only", "ALLOW_ALL": "all",
           "ALLOW_INTERNAL_AND_GCLB": "internal-and-gclb"}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("functions")
    present = [n for n in REFERENCED if (ROOT / "functions" / n / "main.py").exists()]
    if present:
        proc = subprocess.run(["bash", str(ROOT / "infra/scripts/package_functions.sh"), str(out), *present],
                              capture_output=True, text=True, check=False, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_the_five_functions_are_referenced():
    assert REFERENCED == sorted(["authorize", "notify_approvers", "approvals",
                                 "finalize_recording", "expire_approvals"])


@pytest.mark.parametrize("name", REFERENCED)
def test_entry_point_exists_and_imports_when_packaged(name, packaged):
    main = ROOT / "functions" / name / "main.py"
    assert main.exists(), f"infra/ or cloudbuild.yaml deploys {name}, but {main} does not exist"
    pkg = packaged / name
    assert (pkg / "jitgate" / "__init__.py").exists(), "the shared package is not packaged with the function"
    assert (packaged / f"{name}.zip").exists()
    # Import from the packaged folder alone, as the Cloud Functions runtime does.
    code = (f"import sys; sys.path[:0] = [{str(pkg)!r}]; import main; "
            f"fn = getattr(main, {name!r}); assert callable(fn), 'not callable'; "
            f"import jitgate; assert jitgate.__file__.startswith({str(pkg)!r}), jitgate.__file__")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=packaged, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("key", sorted(TF_FUNCTIONS))
def test_cloudbuild_deploys_each_function_as_terraform_declares_it(key):
    spec = TF_FUNCTIONS[key]
    assert spec["entry_point"] == key, "entry point and folder share one name"
    flags = CB_DEPLOYS.get(spec["name"])
    assert flags, f"cloudbuild.yaml does not deploy {spec['name']}"
    assert flags["--entry-point"] == spec["entry_point"]
    assert flags["--source"] == f"build/functions/{key}"
    assert flags["--gen2"] is True
    assert flags["--ingress-settings"] == INGRESS[spec["ingress"]]
    # A deploy must not undo the warm instance that keeps approvals within Slack's 3 s.
    assert str(flags.get("--min-instances", 0)) == str(spec.get("min_instances", 0))
    sa = f"jitgate-fn-{key.replace('_', '-')}@${{PROJECT_ID}}.iam.gserviceaccount.com"
    assert flags["--service-account"] == sa
    if spec["trigger"] == "http":
        assert flags.get("--trigger-http") is True and "--trigger-topic" not in flags
    else:
        trigger = spec["trigger"]
        if trigger.startswith("${var."):
            variables = load_terraform().variables()
            trigger = attr(variables[trigger[6:-1]], "default")
        assert trigger == "pubsub"
        assert flags["--trigger-topic"] == spec["topic"]
        assert flags["--trigger-service-account"] == sa
        assert flags.get("--retry") is True


def test_runtime_matches(cloudbuild, tf):
    assert cloudbuild["substitutions"]["_RUNTIME"] == attr(tf.variables()["function_runtime"], "default")
    for flags in CB_DEPLOYS.values():
        assert flags["--runtime"] == "${_RUNTIME}"


def test_approvals_stays_warm_for_slacks_deadline():
    assert int(TF_FUNCTIONS["approvals"]["min_instances"]) >= 1


def test_only_approvals_is_open_to_the_internet():
    open_ = sorted(k for k, spec in TF_FUNCTIONS.items() if spec["ingress"] != "ALLOW_INTERNAL_ONLY")
    assert open_ == ["approvals"]


def test_each_function_has_its_own_account(tf):
    body = tf.resource("google_cloudfunctions2_function", "fn")
    service_config = attr(body, "service_config")
    assert attr(service_config, "service_account_email") == "${google_service_account.fn[each.key].email}"
    sa = tf.resource("google_service_account", "fn")
    assert attr(sa, "for_each") == "${local.function_names}"
    assert set(tf.local("function_names").replace("${toset([", "").replace("])}", "")
               .replace("'", "").replace('"', "").replace(" ", "").split(",")) == set(TF_FUNCTIONS)


@pytest.mark.parametrize("name", REFERENCED)
def test_function_logs_json_lines_that_cloud_logging_parses(name, packaged):
    """Cloud Logging turns a JSON line on stderr into a structured entry (severity, message,
    fields); a function that never sets up logging drops INFO lines such as each approval
    decision, expiry sweep and seal."""
    pkg = packaged / name
    code = (f"import sys, logging; sys.path[:0] = [{str(pkg)!r}]; import main; "
            "from jitgate.logs import log; "
            "log(logging.getLogger('jitgate.probe'), logging.INFO, 'approval decided', approval_id='a1')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=packaged, check=False,
                          env={"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "p"})
    assert proc.returncode == 0, proc.stderr
    import json

    entries = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert {"severity": "INFO", "message": "approval decided", "approval_id": "a1"}.items() <= entries[-1].items(), proc.stderr
    for line in proc.stderr.splitlines():
        json.loads(line)  # every line, not only ours
