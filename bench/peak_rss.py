"""Run a command and print its exit status, peak resident memory (KB) and CPU seconds (user +
system, its waited-for children included): ``STATUS PEAK_KB CPU_S``.

    python bench/peak_rss.py COMMAND [ARG ...]

Why a process of its own: Linux carries a process's peak memory across fork and exec, so a
command started straight from a process that once held a lot (a benchmark that built 100,000
rows, a test runner) reports that process's peak as its own. This small process forks the
command and reads its peak from wait4. The command's standard output is discarded.
"""

import os
import sys


def main(argv: list[str]) -> None:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, round(usage.ru_utime + usage.ru_stime, 2))


if __name__ == "__main__":
    main(sys.argv[1:])
