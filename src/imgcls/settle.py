"""Every value a run derives, settled in one place, once, before anything reads them.

A composed config says what the user asked for. A few values a run uses follow from it, from
the machine or from an earlier run:
- the lr scaled to the global batch, cuDNN's autotuner off under determinism, per-process
  BatchNorm on CPUs (utils/config_resolve.py);
- what a resume continues: the checkpoint file, and the run dir it belongs to (resume.py).
`settle` checks the values (utils/config_checks.py), works out all of these, holds a resume's
checkpoint to the run (net, classes, schedule) while nothing has been written, and only then
writes them into the config together. From there on the config is read, never rewritten: what a
run saves and logs as its config is what it used, and a refused resume leaves every dir as it was.
"""

from typing import Any

from omegaconf import DictConfig

from imgcls.resume import check_checkpoint_fits, resume_target
from imgcls.utils.compose import instantiate, set_in_struct
from imgcls.utils.config_checks import check_values
from imgcls.utils.config_resolve import derived_values


def settle(cfg: DictConfig) -> dict[str, Any]:
    """Check `cfg`, write into it the values the run derives, and return them ({dotted key:
    value}, empty when the config already says everything)."""
    check_values(cfg)
    settled = derived_values(cfg)
    resume = resume_target(cfg)
    if resume is not None:
        # the classes the data has, from a data source built only to name them (no loading)
        check_checkpoint_fits(resume, cfg, instantiate(cfg.data).class_names)
        settled["ckpt_path"] = str(resume.ckpt)
        if resume.run_dir is not None:
            settled["paths.output_dir"] = str(resume.run_dir)
    for key, value in settled.items():
        set_in_struct(cfg, key, value)
    return settled
