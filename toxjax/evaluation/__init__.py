"""Model-independent evaluations: RealToxicityPrompts, zero-shot utility tasks, bias AUC.

Each evaluation talks to a model only through the interfaces in `requests`
(`LoglikelihoodFn`, `GenerateFn`, `ScoreFn`).
"""
