"""`python -m toxjax.launch`: the launcher (toxjax.launch.launcher)."""

from toxjax.launch import launcher

launcher.run()
