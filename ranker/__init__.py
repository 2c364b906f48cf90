"""Second stage: ranker features over merged candidates and the LightGBM ranker that scores them."""
