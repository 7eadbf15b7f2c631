"""toxjax: pretraining less toxic language models by conditioning on toxicity signals."""

__version__ = "0.1.0"
