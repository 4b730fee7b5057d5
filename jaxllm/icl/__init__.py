"""In-context-learning estimators: the algorithms the ICL studies compare transformers with."""
