"""LEAD data selection (samplax.data_sampling.lead) training an MLP classifier on
``clusters_mix`` (clean, noisy-label and redundant clusters; example i is in cluster
i // 256), 640 steps of 32 = 10 epochs' worth of examples:

    python -m experiments.train --config=configs/train_lead_clusters.py --workdir=runs/lead_clusters

Compare with ``--config.train.sampler.name=uniform`` (and no options); docs/training_sampling_lead.md.
"""
import ml_collections

from samplax.experiment.config import classify_train_config


def get_config():
    c = classify_train_config()
    c.data.name = "clusters_mix"
    c.data.options = ml_collections.ConfigDict(dict(clean=4, noisy=2, redundant=2, cluster_size=256))
    c.model.network = "mlp"
    c.model.mlp.hidden = (64, 64)
    c.optim.learning_rate = 3e-3
    c.train.batch_size = 32
    c.train.num_steps = 640
    c.train.log_every = 64
    c.train.sampler.name = "lead"
    c.train.sampler.options = ml_collections.ConfigDict(dict(cluster_size=256))
    return c
