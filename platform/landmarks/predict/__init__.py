"""Using what was trained (`models.artifact`): a model served on photos (`serving`, what MLflow's pyfunc
runs), and batch prediction over datasets or folders of images on Ray Data (`job`, jobs/predict.py)."""
