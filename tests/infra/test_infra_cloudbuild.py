"""cloudbuild.yaml: every file and command it references exists; substitutions documented."""

import re
import shutil

from infra_support import ROOT, shell_commands, step_script

KNOWN_COMMANDS = {"bash", "sh", "gcloud", "echo", "cat", "mkdir", "cp", "basename", "set", "[",
                  "exit", "for", "done", "do", "{", "}"}


def all_commands(cloudbuild):
    for step in cloudbuild["steps"]:
        for cmd in shell_commands(step_script(step)):
            yield step["id"], cmd


def test_runs_the_readme_test_command(cloudbuild):
    scripts = [step_script(s) for s in cloudbuild["steps"]]
    assert any("bash scripts/test.sh" in s for s in scripts)
    assert (ROOT / "scripts" / "test.sh").exists(), "cloudbuild.yaml runs scripts/test.sh, which is missing"


def test_every_referenced_file_exists(cloudbuild):
    referenced = set()
    for _, cmd in all_commands(cloudbuild):
        for tok in cmd:
            if re.fullmatch(r"(infra|scripts|functions)/[\w./-]+", tok):
                referenced.add(tok)
    for script in (ROOT / "infra" / "scripts").glob("*.sh"):
        for tok in re.findall(r"\b(?:infra|scripts)/[\w./-]+\.(?:sh|txt|py|tftpl)(?![\w.])|requirements\.txt", script.read_text()):
            referenced.add(tok)
    assert "infra/scripts/package_functions.sh" in referenced
    for path in sorted(referenced):
        assert (ROOT / path).exists(), f"cloudbuild.yaml refers to {path}, which does not exist"


def test_function_sources_are_produced_by_the_package_step(cloudbuild):
    package = next(s for s in cloudbuild["steps"] if s["id"] == "package-functions")
    packaged = set(package["args"][2:])
    sources = {tok.split("=", 1)[1] for _, cmd in all_commands(cloudbuild)
               for tok in cmd if tok.startswith("--source=")}
    assert sources == {f"build/functions/{n}" for n in packaged}


def test_every_command_is_known(cloudbuild):
    for step_id, cmd in all_commands(cloudbuild):
        word = cmd[0]
        if "=" in word and not word.startswith("["):
            continue  # a variable assignment
        assert word in KNOWN_COMMANDS, f"step {step_id} runs {word!r}, which no step image is known to have"


def test_steps_wait_for_what_they_use(cloudbuild):
    ids = [s["id"] for s in cloudbuild["steps"]]
    assert len(ids) == len(set(ids))
    for step in cloudbuild["steps"]:
        for dep in step.get("waitFor", []):
            assert dep == "-" or dep in ids[: ids.index(step["id"])], f"{step['id']} waits for unknown {dep}"
    order = {i: n for n, i in enumerate(ids)}
    # Tests gate everything that ships.
    for step in cloudbuild["steps"]:
        if step["id"].startswith(("package", "build", "upload", "deploy", "roll")):
            assert order[step["id"]] > order["test"]


def test_substitutions_are_declared_used_and_documented(cloudbuild):
    text = (ROOT / "cloudbuild.yaml").read_text()
    declared = set(cloudbuild["substitutions"])
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", text))
    assert used <= declared, f"undeclared substitutions: {used - declared}"
    assert declared <= used, f"declared but unused: {declared - used}"
    header = text.split("substitutions:")[0]
    for name in declared:
        assert re.search(rf"#\s+{name}\s+\S", header), f"{name} is not documented in the header"
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in declared:
        assert name in deploy_doc, f"{name} is not explained in docs/deploy.md"


def test_bash_variables_are_escaped(cloudbuild):
    # Cloud Build substitutes $NAME itself: shell variables must be written $$NAME.
    builtins = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID"}
    for step in cloudbuild["steps"]:
        script = step_script(step)
        for m in re.finditer(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_]*)", script):
            assert m.group(1) in builtins or m.group(1).startswith("_"), (
                f"step {step['id']}: ${m.group(1)} would be taken for a substitution")


def test_scripts_parse():
    bash = shutil.which("bash")
    import subprocess
    for script in sorted((ROOT / "infra" / "scripts").glob("*.sh")) + [ROOT / "scripts" / "infra_checks.sh"]:
        proc = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


# The programs the test suite runs, and the package that brings each. Cloud Build's test
# step starts from a bare python:3.11-bookworm image: whatever the suite runs must be
# installed by scripts/install.sh (which scripts/test.sh runs) or by
# infra/scripts/cloudbuild_test_env.sh, not merely present on a developer's machine.
TOOL_PACKAGES = {
    "kubectl": "kubectl", "gcloud": "google-cloud-cli", "java": "openjdk-17-jre-headless",
    "psql": "postgresql-client", "initdb": "postgresql", "pgbouncer": "pgbouncer",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client", "sshd": "openssh-server",
    "scp": "openssh-client", "sftp": "openssh-client", "sshpass": "sshpass", "rsync": "rsync",
    "node": "nodejs", "npm": "npm", "terraform": "terraform", "openssl": "openssl",
}
# In the python:3.11-bookworm image already, or installed by pip from requirements-test.txt.
IMAGE_OR_PIP = {"bash", "asciinema", "python3", "git", "curl", "py-spy", "jitgate"}


def tools_the_suite_runs() -> set[str]:
    found = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "jitgate").rglob("*.py")]:
        if "corpus" in path.parts:
            continue
        text = path.read_text(errors="replace")
        found |= set(re.findall(r'shutil\.which\("([\w.-]+)"\)', text))
        found |= set(re.findall(r'(?:\(|\[)\s*\[?"(kubectl|gcloud|java|psql|pgbouncer|ssh|ssh-keygen|scp|sftp|sshpass|'
                                r'rsync|node|npm|terraform|openssl)"', text))
        if "/usr/sbin/sshd" in text:
            found.add("sshd")
        if re.search(r"\bssh_cmd\(\"(scp|sftp)\"", text):
            found |= set(re.findall(r"\bssh_cmd\(\"(scp|sftp)\"", text))
    return found


def installed_packages() -> set[str]:
    install = (ROOT / "scripts" / "install.sh").read_text() + (ROOT / "scripts" / "test-tools.sh").read_text()
    env = (ROOT / "infra" / "scripts" / "cloudbuild_test_env.sh").read_text()
    packages = set()
    for group in re.findall(r"(?:need_apt|debian|google|hashicorp)\+=\(([\w.+ -]+)\)", install):
        packages |= set(group.split())
    for line in re.sub(r"\\\n", " ", env).splitlines():
        if "apt-get install" in line:
            packages |= {w for w in line.split("apt-get install", 1)[1].split() if not w.startswith("-")}
    if re.search(r"install -m 0755 \S*/terraform /usr/local/bin/terraform", env):
        packages.add("terraform")
    return packages


def test_cloud_build_test_step_installs_every_tool_the_suite_runs():
    tools = tools_the_suite_runs()
    assert {"kubectl", "psql", "ssh", "gcloud", "java", "terraform"} <= tools, tools
    installed = installed_packages()
    for tool in sorted(tools - IMAGE_OR_PIP):
        assert tool in TOOL_PACKAGES, f"the suite runs {tool!r}: add the package that brings it to TOOL_PACKAGES"
        assert TOOL_PACKAGES[tool] in installed or tool == "openssl", (
            f"the suite runs {tool} but neither scripts/install.sh nor infra/scripts/cloudbuild_test_env.sh "
            f"installs {TOOL_PACKAGES[tool]}: Cloud Build's test step would fail")
