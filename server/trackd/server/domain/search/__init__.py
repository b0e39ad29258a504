"""The search language: MLflow's filter and order_by syntax, plus OR, NOT, parentheses and
metric summaries. Parsing lives here; compiling to SQL lives in the store."""
