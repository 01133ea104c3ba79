"""Training: the teacher's matching regression and RealUID distillation, both resumable.

One job per module: :mod:`.rng` (every random draw as a function of the step), :mod:`.batches` (the
data stream and the per-process rows), :mod:`.optimization` (Adam, its schedule, EMA),
:mod:`.bookkeeping` (curves, host syncs, checkpoint cadence, resume), and the two loops:
:mod:`.teacher` and :mod:`.distillation` (RealUID, its GAN head and in-training evaluation). This
package imports none of them, so a stage that trains the teacher runs no distillation code (its code
deps, :mod:`realuid.code_digest`, do not name it).

Resuming: every random draw of step ``k`` comes from an RNG seeded by ``(seed, k, phase)`` and the
data order of epoch ``e`` from one seeded by ``(seed, e)``, so the loop's randomness is a pure function of
the step counter. A checkpoint therefore only needs weights, optimizer, scheduler and EMA state plus the
step; a run killed at any point and started again ends with bit-identical weights on CPU (tested).

Data parallelism (see :mod:`realuid.distributed`): under ``torchrun`` every process takes the same global
batch and makes the same random draws, then computes only its own rows; gradients are averaged across
processes before clipping, so weights, optimizer state and EMA stay identical everywhere and the run
equals the one-process run with the same global batch up to floating-point summation order. The
teacher's dropout masks are drawn per (step, rank), as different rows of one big batch would get
different masks; distillation runs without dropout. The state holds nothing per process, so a run may
resume with a different number of processes.

Host synchronisation: losses and gradient norms are accumulated on the device and read once per log
interval; the NaN/Inf check happens there too, and a checkpoint is written only after the check passed,
so the last checkpoint on disk is always a good one.
"""
