"""A dataset of your own for tuner: load(task) returns uint8 image arrays, labels and class names.

Here: scikit-learn's bundled handwritten digits (8x8, values 0..16), converted to what tuner prepares from
every dataset. Yours would read your own format, e.g. from task.data_dir. tuner calls it once per host and
keeps the result in its cache (its key covers this file's source and the files under task.data_dir, if set).
"""

import numpy as np
from sklearn.datasets import load_digits


def load(task):
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8) uint8
    return {"images": images, "labels": digits.target, "classes": [str(d) for d in range(10)]}
