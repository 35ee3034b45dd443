"""How fast bad input is refused: each refusal's wall time against the CLI's bare start-up.

    python benchmarks/fail_fast.py

Every case runs `alignprobe ...` in a fresh interpreter (what a user waits for, imports
included), offline, with an empty Hugging Face home and a private cache directory, and must
exit with status 2 and write nothing. Printed per case: the exit status, the seconds, and the
ratio to `alignprobe --help` measured the same way (the start-up every command pays); a refusal
that loads a model or encodes data would show as a ratio far above 1. The unit tests check what
each refusal says and that nothing is written (`tests/test_cli_run.py`,
`tests/test_reliability_cli.py`, `tests/test_backbones_registry.py`); this script measures the
time, which a unit test on a shared machine cannot do reliably.

Targets (formerly timed asserts in the tests): an unavailable hub model under 60 s end to end
(ratio ~1), a bad number or an unwritable location under 10 s, `check_available` on a missing
hub id under 5 s.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from alignprobe.cli import main; main()"]
PAIR = ["--vision", "pixels", "--text", "bow"]
BAD_NUMBERS = [
    ["encode", "--model", "pixels", "--data", "digits", "--batch-size", "0"],
    ["encode", "--model", "pixels", "--data", "digits", "--shard", "2/2"],
    ["run", *PAIR, "--epochs", "0"],
    ["run", *PAIR, "--lr", "0"],
    ["sweep", *PAIR, "--seeds", "0,x"],
    ["sweep", *PAIR, "--shard", "0/0"],
    ["plot", ".", "--n-boot", "0"],
]
CHECK_AVAILABLE = ("from alignprobe.backbones import check_available, resolve_spec\n"
                   "from alignprobe.errors import EncoderNotAvailableError\n"
                   "import time\nspec = resolve_spec('facebook/dinov2-large', 'vision')\nt = time.perf_counter()\n"
                   "try:\n    check_available(spec)\nexcept EncoderNotAvailableError:\n"
                   "    print(time.perf_counter() - t)\n")


def timed(args: list[str], cwd: Path, env: dict) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - start


def cases(root: Path) -> list[tuple[str, list[str]]]:
    blocker = root / "a-file"
    blocker.write_text("not a directory")
    out = [("unavailable hub models (run dinov2 x gte)",
            ["run", "--vision", "dinov2", "--text", "gte", "--results-dir", str(root / "results")])]
    out += [("bad number: " + " ".join(a[:1] + a[-2:]), a) for a in BAD_NUMBERS]
    out += [(f"cache below a file: {command}",
             [command, *(["--model", "pixels", "--data", "digits"] if command == "encode" else PAIR),
              "--cache-dir", str(blocker / "cache")]) for command in ("encode", "run", "sweep")]
    out += [(f"results below a file: {command}", [command, *PAIR, "--results-dir", str(blocker / "results")])
            for command in ("run", "sweep")]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = dict(os.environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   ALIGNPROBE_CACHE_DIR=str(root / "cache"))
        _, startup = timed([*CLI, "--help"], root, env)
        print(f"{'case':<52} {'exit':>4} {'seconds':>8} {'x start-up':>10}")
        print(f"{'alignprobe --help (start-up)':<52} {0:>4} {startup:>8.2f} {1.0:>10.2f}")
        for name, args in cases(root):
            code, seconds = timed([*CLI, *args], root, env)
            wrote = (root / "cache").exists() or (root / "results").exists()
            print(f"{name:<52} {code:>4} {seconds:>8.2f} {seconds / startup:>10.2f}"
                  + ("  WROTE OUTPUT" if wrote else "") + ("" if code == 2 else "  UNEXPECTED EXIT"))
        done = subprocess.run([sys.executable, "-c", CHECK_AVAILABLE], env=env, capture_output=True, text=True)
        print(f"check_available('facebook/dinov2-large') offline, in-process: {float(done.stdout):.3f} s")


if __name__ == "__main__":
    main()
