"""Under CI (any truthy CI value, or QTNB_NO_SKIP=1) nothing passes by skipping: a module-level skip, a test's skip and
an xfail test that passes all fail the run; on a developer's machine they skip as before. Runs pytest on a small
throw-away test folder with this repository's conftest.py and pytest options."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
from fastcore.test import test_eq as eq

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "test_module_skip.py": "import pytest\npytest.skip('no such program', allow_module_level=True)\ndef test_x(): pass\n",
    "test_importorskip.py": "import pytest\npytest.importorskip('no_such_module_qtnb')\ndef test_x(): pass\n",
    "test_xfail_passes.py": "import pytest\n@pytest.mark.xfail(reason='was broken')\ndef test_x(): pass\n",
    "test_require.py": "from conftest import require\ndef test_x(): require(False, 'postgres is missing')\n",
    "test_ok.py": "def test_x(): pass\n",
}


def outcome(tmp_path, env_extra, names):
    for name in names: (tmp_path / name).write_text(CASES[name])
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "QTNB_NO_SKIP")} | env_extra
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                        "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    return r.returncode, r.stdout


MODULE_SKIPS = ["test_module_skip.py", "test_importorskip.py"]
TEST_LEVEL = ["test_xfail_passes.py", "test_require.py", "test_ok.py"]
ON = [{"CI": "on"}, {"CI": "TRUE"}, {"CI": "Yes"}, {"CI": "1"}, {"QTNB_NO_SKIP": "1"}]
OFF = [{}, {"CI": "false"}, {"CI": "0"}, {"CI": ""}]


@pytest.mark.parametrize("env", ON, ids=str)
def test_under_ci_module_skips_fail(tmp_path, env):
    rc, out = outcome(tmp_path, env, MODULE_SKIPS + ["test_ok.py"])
    assert rc != 0, out                                 # a collection error stops the run
    eq(out.count("module skipped under CI"), 4)         # each module, in the report and in the summary


@pytest.mark.parametrize("env", ON, ids=str)
def test_under_ci_skips_and_passing_xfails_fail(tmp_path, env):
    rc, out = outcome(tmp_path, env, TEST_LEVEL)
    eq(rc, 1)
    assert "2 failed, 1 passed" in out.strip().splitlines()[-1], out


@pytest.mark.parametrize("env", OFF, ids=str)
def test_off_ci_they_skip_and_a_passing_xfail_still_fails(tmp_path, env):
    rc, out = outcome(tmp_path, env, MODULE_SKIPS + TEST_LEVEL)
    eq(rc, 1)                                           # xfail_strict holds everywhere
    assert "1 failed, 1 passed, 3 skipped" in out.strip().splitlines()[-1], out
