"""The transformers side of a benchmark: a script in .venv-ref driven one command at a time.

The script answers each stdin line with one stdout line `@@ {json}` (an `error` key stops the
benchmark); its stderr is kept for the message if it dies.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


class RefProcess:
    def __init__(self, cmd: list[str], threads: int, omp_wait_policy: str | None):
        self.cmd = cmd
        self.err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if omp_wait_policy:
            env["OMP_WAIT_POLICY"] = omp_wait_policy
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env)
        self._read()  # the script says it is ready once its model is loaded

    def __call__(self, op: str) -> dict:
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                out = json.loads(line[3:])
                if "error" in out:
                    sys.exit(f"bench: transformers helper: {out['error']}")
                return out
        self.err.seek(0)
        sys.exit(f"bench: transformers helper exited ({' '.join(self.cmd)}):\n{self.err.read()[-3000:]}")

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)
        self.err.close()
