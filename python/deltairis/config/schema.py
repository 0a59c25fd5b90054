"""Typed schema of the training configuration (``deltairis-train``).

The YAML files beside this module (``trainer.yaml``, ``env/*.yaml``, ``params/*.yaml``) fill these
dataclasses through Hydra; the schema makes OmegaConf reject unknown keys and wrong types with an
error that names the key (``full_key: common.epochs``). Model hyper-parameters are not here: they come
from :func:`deltairis.config.make_agent_config` (``agent.preset``) plus optional ``agent.overrides``.
Everything about *when* and *how much* to train (docs/algorithm.md section 6) is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class WandbConfig:
    """Weights & Biases logging; used only when ``wandb`` is installed and ``mode != disabled``."""

    mode: str = "online"  # online | offline | disabled (offline is used when no credentials exist)
    project: str = "delta-iris"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] | None = None
    notes: str | None = None


@dataclass
class CommonConfig:
    epochs: int = MISSING
    device: str = "auto"  # auto: CUDA when available, else CPU; or any torch device string
    seed: int | None = None  # None: drawn once at the start of a run and saved in the run folder
    resume: bool = False  # continue the run in the current / given run folder (scripts/resume.sh)
    # Resume a run folder written by an earlier version (pickled checkpoint files) once: loads it with
    # full unpickling, which runs any code a crafted file holds, then rewrites it in the safe format.
    # Only for a run folder you trust; every other file is always read as data.
    trust_checkpoint: bool = False
    do_checkpoint: bool = True
    # Also write a mid-epoch checkpoint every this many steps (gradient or collection steps); None: only
    # at the end of every epoch and when SIGTERM/SIGINT stops the run.
    checkpoint_every_steps: int | None = None
    # Write the checkpoint files on a background thread (the loop only waits for the host copies and the
    # store commits); false: write them on the training thread, as before. The same bytes either way.
    checkpoint_in_background: bool = True
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's default
    progress_bar: bool = True
    tf32: bool = True  # TF32 matmuls on CUDA, as the reference enables them
    # Check every enabled GPU fast path against its reference at the start of a CUDA run and switch off
    # those that fail (deltairis.train.preflight); nothing runs on CPU.
    preflight: bool = True
    # Estimate each component's peak memory before the first collection and stop (exit 2, naming the
    # component and the grad_acc_steps that fit) when one does not fit (deltairis.train.memory); false
    # skips it, for an estimate you know to be wrong.
    memory_plan: bool = True


@dataclass
class AgentSection:
    preset: str = MISSING  # crafter | atari | tiny  -> make_agent_config(preset, num_actions)
    # Nested overrides of the preset's AgentConfig fields, e.g. {actor_critic: {horizon: 10}}.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Initial weights of a fresh run (a warm start): our checkpoint or a reference-layout state dict (the
    # reference's initialization.path_to_checkpoint); only the components chosen below are loaded, strictly.
    path_to_ckpt: str | None = None
    load_tokenizer: bool = True
    load_world_model: bool = True
    load_actor_critic: bool = True


@dataclass
class EnvSplitConfig:
    """Settings of the train or test environments; ``None`` fields keep the env's default."""

    id: str | None = None  # Atari game id, e.g. BreakoutNoFrameskip-v4
    max_episode_steps: int | None = None  # time limit in agent steps (Crafter ``length``, toy)
    max_episode_frames: int | None = None  # Atari time limit in raw emulator frames
    noop_max: int | None = None  # Atari: random no-op frames at reset (1..noop_max)
    respawn: bool | None = None  # toy: the goal reappears after being reached
    grid: int | None = None  # toy: board size in cells a side (2..8)
    frame_skip: int | None = None  # gymnasium: env steps per agent step (rewards summed)
    max_pool: bool | None = None  # gymnasium: max of the last two frames of a step (needs frame_skip >= 2)
    # gymnasium: keyword arguments of gymnasium.make (e.g. +env.train.make_kwargs.difficulty=2)
    make_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvConfig:
    name: str = MISSING  # crafter | atari | toy | gymnasium  (deltairis.envs.make_vector_env)
    backend: str = "auto"
    num_threads: int | None = None
    train: EnvSplitConfig = field(default_factory=EnvSplitConfig)
    test: EnvSplitConfig = field(default_factory=EnvSplitConfig)


@dataclass
class TrainCollectionConfig:
    num_envs: int = MISSING
    num_steps: int = MISSING  # env steps per epoch, all envs together
    num_steps_first_epoch: int = MISSING  # first epoch: uniformly random actions
    stop_after_epochs: int = MISSING  # no collection after this epoch
    epsilon: float = 0.01
    temperature: float = 1.0
    num_episodes_to_save: int = 10  # finished episodes per epoch written to media/episodes


@dataclass
class TestCollectionConfig:
    num_envs: int = MISSING
    num_episodes: int = MISSING
    epsilon: float = 0.0
    temperature: float = 1.0  # the reference's test policy: sampled at temperature 1, epsilon 0
    num_episodes_to_save: int = 10


@dataclass
class CollectionConfig:
    train: TrainCollectionConfig = field(default_factory=TrainCollectionConfig)
    test: TestCollectionConfig = field(default_factory=TestCollectionConfig)
    # A dataset in the reference layout imported into the train store of a fresh run (no collection).
    path_to_static_dataset: str | None = None


#: Optimizer kinds of ``training.<component>.optimizer`` (see deltairis.models.configure_optimizer).
OPTIMIZERS = ("adamw", "adam")


@dataclass
class ComponentTrainingConfig:
    start_after_epochs: int = 0  # trains at epoch e (1-based) when e > start_after_epochs
    steps_per_epoch: int = MISSING
    steps_first_epoch: int = MISSING  # at global epoch 1 only (a component starting later never uses it)
    batch_size: int = MISSING  # rows of one micro-batch (the reference's batch_num_samples)
    # Micro-batches per optimizer step (the reference's grad_acc_steps): an epoch draws
    # steps_per_epoch * grad_acc_steps batches of batch_size; each loss is divided by it before backward.
    grad_acc_steps: int = 1
    seq_len: int | None = None  # None for the actor-critic: burn_in + 1 of the agent config
    learning_rate: float = 1e-4
    weight_decay: float = 0.0  # on Linear/Conv1d weights only (deltairis.models.configure_optimizer)
    optimizer: str = "adamw"  # "adamw" (tokenizer, world model) or "adam" (the reference's actor-critic)
    max_grad_norm: float = 10.0
    sampling_alpha: float = 0.0  # episode priority (1 / (1 + visits)) ** alpha
    mixed_precision: bool = False  # bf16 autocast, only on CUDA


@dataclass
class TrainingConfig:
    should: bool = True
    # Opt-in variant (not the reference): padding transitions are left out of the tokenizer's commitment
    # loss and codebook statistics, of the world model's Δ-token targets, and of the LSTM burn-ins.
    exclude_padding: bool = False
    # A step whose loss or gradient norm is not finite is skipped (counted in <name>/skipped_steps);
    # this many consecutive skips of one component stop the run with an error (0: never stop).
    max_consecutive_skips: int = 10
    # Opt-in: a component whose step does not fit the device's memory (deltairis.train.memory) trains in
    # the smallest grad_acc_steps that fits, with the matching batch_size (logged); false: the run stops
    # before its first collection with a message naming both.
    auto_grad_acc: bool = False
    tokenizer: ComponentTrainingConfig = field(default_factory=ComponentTrainingConfig)
    world_model: ComponentTrainingConfig = field(default_factory=ComponentTrainingConfig)
    actor_critic: ComponentTrainingConfig = field(
        default_factory=lambda: ComponentTrainingConfig(optimizer="adam")
    )


@dataclass
class EvaluationConfig:
    should: bool = True
    every: int = MISSING  # evaluate at epochs that are multiples of this
    # Eval losses cover every segment of the test episodes (the reference); an int caps the batches.
    num_batches: int | None = None
    save_reconstructions: bool = True
    num_reconstructions: int = 8


@dataclass
class DistributedConfig:
    """Several processes on one run (``torchrun``); without torchrun these settings are not used."""

    # A rank waiting longer than this at a collective or barrier, or for a rank 0 that sends no heartbeat,
    # exits with an error naming the rank (a dead rank is usually noticed at once).
    timeout_s: float = 1800.0
    # Node-local folder of the node's replay-store replica (``<store_dir>/rank<r>``, r the node's lowest
    # rank, its writer; the node's other ranks read it); None: a folder under the system temp dir named
    # after the run folder. Rank 0's node reads the run folder's store: no replica.
    store_dir: str | None = None


@dataclass
class DataConfig:
    """How the run's replay stores keep their data."""

    # Frames on disk: "none" (raw) or "lz4" (LZ4 blocks of at most 8 steps, decoded by the sampler;
    # README "Replay storage"). Fixed when a run's stores are created: a store written with one setting
    # is refused with another (deltairis-store convert changes it).
    compression: str = "none"


@dataclass
class TrainerConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    agent: AgentSection = field(default_factory=AgentSection)
    env: EnvConfig = field(default_factory=EnvConfig)
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    data: DataConfig = field(default_factory=DataConfig)


__all__ = [
    "AgentSection",
    "CollectionConfig",
    "CommonConfig",
    "ComponentTrainingConfig",
    "DataConfig",
    "DistributedConfig",
    "EnvConfig",
    "EnvSplitConfig",
    "EvaluationConfig",
    "TestCollectionConfig",
    "TrainCollectionConfig",
    "TrainerConfig",
    "TrainingConfig",
    "WandbConfig",
]
