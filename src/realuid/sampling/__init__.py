"""All sampling: teacher solvers, one- and k-step generation, per-seed inputs and the batched draw loops.

- :mod:`.solvers`: the teacher's ODE (Euler, Heun) and SDE (Euler–Maruyama) samplers, classifier-free guidance.
- :mod:`.few_step`: the generator read once at the source end, and a k-step student's re-noising chain.
- :mod:`.seeds`: sample ``i`` starts from the noise of seed ``seed + i`` (EDM's per-seed noise).
- :mod:`.draw`: ``n`` samples of a module batch by batch; the ``sample`` stage's loop over processes.
"""

from .draw import draw_samples, sample_in_batches, stream_samples
from .few_step import (OneStepGenerator, check_generator_times, generate_one_step, generate_steps, renoise_inputs,
                       renoise_step)
from .seeds import check_noise, class_labels, one_step_inputs, renoise_noise, seeded_noise, seeded_noise_draws
from .solvers import SAMPLER_METHODS, sample_ode, sample_sde, sample_teacher, sample_teacher_batch

__all__ = ["SAMPLER_METHODS", "OneStepGenerator", "check_generator_times", "check_noise", "class_labels",
           "draw_samples", "generate_one_step", "generate_steps", "one_step_inputs", "renoise_inputs", "renoise_noise",
           "renoise_step", "sample_in_batches", "sample_ode", "sample_sde", "sample_teacher", "sample_teacher_batch",
           "seeded_noise", "seeded_noise_draws", "stream_samples"]
