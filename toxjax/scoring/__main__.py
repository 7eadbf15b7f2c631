"""`python -m toxjax.scoring`: the scoring command (toxjax.scoring.score_main)."""

from toxjax.scoring import score_main

score_main.run()
