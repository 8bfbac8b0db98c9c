"""The saved format and the plain predictor; Hugging Face import and export."""
