"""Using what was trained: a trained model as one self-contained object (`model.LandmarkModel`), and
batch prediction over datasets or folders of images on Ray Data (`job`, jobs/predict.py)."""
