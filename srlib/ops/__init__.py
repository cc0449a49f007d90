"""Operations: the production jobs and the services they talk to.

Owns the ``dr``/``pdr`` jobs (:mod:`.jobs`), campaigns of many jobs on a dask cluster
(:mod:`.campaign`), the finalisation of a batch job (:mod:`.finalise`), publishing to S3
(:mod:`.publish`), the metadata database with leased claims (:mod:`.db`), failure
notifications (:mod:`.notify`), SLURM batch scripts and clusters (:mod:`.slurm`,
profiles in ``slurm_profiles/``) and a local cluster of one worker per GPU
(:mod:`.devices`).
It may import every lower layer; only :mod:`srlib.cli` imports it.
"""

from .campaign import Outcome, read_requests, run_campaign
from .db import MetadataDB
from .devices import device_cluster, gpu_devices
from .finalise import finalise_job
from .jobs import DrRequest, JobResult, plan_dr, run_dr, run_pdr
from .publish import ObjectStore, S3Target, object_store, publish, publish_product
from .slurm import dask_cluster, load_profile

__all__ = ["DrRequest", "JobResult", "MetadataDB", "ObjectStore", "Outcome", "S3Target",
           "dask_cluster", "device_cluster", "finalise_job", "gpu_devices", "load_profile",
           "object_store", "plan_dr", "publish", "publish_product", "read_requests",
           "run_campaign", "run_dr", "run_pdr"]
