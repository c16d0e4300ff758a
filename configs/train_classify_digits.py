"""Train the digits CNN classifier (samplax.models.classifier.DigitsClassifier) with the model
trainer; log rows carry eval_accuracy on the held-out split and elapsed_s (time-to-accuracy):

    python -m experiments.train --config=configs/train_classify_digits.py --workdir=runs/classify_digits

Pick the examples of each step with a data sampler (samplax.data_sampling), e.g.

    --config.train.sampler.name=fixed_subset --config.train.sampler.options.fraction=0.1
"""
from samplax.experiment.config import classify_train_config


def get_config():
    return classify_train_config()
