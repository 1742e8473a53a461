"""The code MLflow logs with every landmark model ("models from code", instead of a pickled object):
`mlflow.pyfunc.load_model` runs this file to get the model's `LandmarkPyfunc`."""

import mlflow.models

from landmarks.tracking.models import LandmarkPyfunc

mlflow.models.set_model(LandmarkPyfunc())
