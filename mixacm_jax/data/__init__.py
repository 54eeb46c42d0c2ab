"""Input: the Grain pipeline over TFDS data sources (`input_pipeline`) and the embedded digits
(`digits`)."""
