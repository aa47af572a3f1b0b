"""Photos -> 3D faces for `python -m regress.predict`: the photo dataset, the predictor (a LightningModule) and its writer."""
