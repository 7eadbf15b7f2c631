"""`python -m toxjax.study`: the study command (toxjax.study.study_main)."""

from toxjax.study import study_main

study_main.run()
