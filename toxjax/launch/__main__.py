"""`python -m toxjax.launch`: the launcher (toxjax.launch.launcher)."""

import sys

from toxjax.launch import launcher

sys.exit(launcher.main())
