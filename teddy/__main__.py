import sys

from teddy.runtime.jobserver import delegate

# with TEDDY_JOB_SERVER set, a warm interpreter runs the command (teddy/runtime/jobserver.py)
code = delegate()
if code is None:
    from teddy.cli import main

    code = main()
sys.exit(code)
