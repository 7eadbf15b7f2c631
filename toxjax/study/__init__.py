"""The study: score, build tasks, train every strategy, evaluate, report."""
