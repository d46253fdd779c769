"""Tests of the settings: defaults, validation errors naming the field, YAML + overrides, printing."""

from __future__ import annotations

import pytest
from fresh_imports import MODULES, loaded
from pydantic import ValidationError

from gcmine.flows.config import describe_settings, load_settings, parse_override
from gcmodels.config import ConfigError, DataConfig, ScoreConfig, Settings, TrainConfig


def test_defaults_validate() -> None:
    s = Settings()
    assert Settings.from_dict({}) == s
    assert load_settings(None, []) == s
    assert s.data.resolution == 64 and s.score.t_min < s.score.t_max
    # the shallow latent model (RESULTS.md 12j): a 2x autoencoder, the UNet on a 32 x 32 grid
    assert s.model.latent_factor == 2 and s.downsampling_factor == 8 and s.patch_size == 13
    assert isinstance(s.data, DataConfig)


@pytest.mark.parametrize(("resolution", "expected"), [(32, 6), (64, 13), (8, 2), (256, 51), (40, 8)])
def test_patch_size_default(resolution: int, expected: int) -> None:
    s = load_settings(None, [f"data.resolution={resolution}", "embed.size=8"])
    assert s.patch_size == expected == max(2, round(0.2 * resolution))


def test_model_base_keeps_its_own_vae() -> None:
    """The pixel model's latent default does not reach a checkpoint: model.base has latent_factor 1
    (and its own defaults) unless the user sets another, which is refused."""
    s = Settings.from_dict({"model": {"base": "/models/sd15"}})
    assert s.model.latent_factor == 1 and s.data.resolution == 256 and s.downsampling_factor == 8
    assert Settings.from_dict({"model": {"base": "/models/sd15", "latent_factor": 1}}) == s
    with pytest.raises(ConfigError, match=r"latent_factor \(2\) applies to the pixel model.*leave it 1"):
        Settings.from_dict({"model": {"base": "/models/sd15", "latent_factor": 2}})
    assert load_settings(None, ["model.latent_factor=1", "data.resolution=32"]).downsampling_factor == 4


def test_patch_size_explicit() -> None:
    assert load_settings(None, ["rank.patch_size=7"]).patch_size == 7


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["train.stepz=5"], ["train.stepz", "unknown setting"]),
        (["nosuchsection.x=1"], ["nosuchsection"]),
        (["train.steps=abc"], ["train.steps", "'abc'"]),
        # settings other defaults are derived from (model.latent_factor, rank.feature_pool) are named too
        (["data.resolution=abc"], ["data.resolution", "'abc'"]),
        (["data.resolution=null"], ["data.resolution", "None"]),
        (["model.latent_factor=x"], ["model.latent_factor", "'x'"]),
        (["score.t_min=0.9"], ["score", "t_min (0.9)", "t_max (0.7)"]),
        (["score.t_min=-0.1"], ["score.t_min", "-0.1"]),
        (["rank.per_image=0"], ["rank.per_image", "0"]),
        (["rank.patch_size=65"], ["rank.patch_size (65)", "data.resolution=64"]),
        (["data.resolution=68"], ["data.resolution (68)", "divisible by 8", "2 times smaller (model.latent_factor)"]),
        (["data.resolution=30"], ["data.resolution (30)", "divisible by 4"]),  # under 64: the UNet on pixels
        (["data.resolution=34", "model.latent_factor=1"], ["data.resolution (34)", "divisible by 4"]),
        (["model.latent_factor=3"], ["latent_factor (3)", "power of 2"]),
        (["train.min_steps=5000"], ["min_steps (5000)", "max_steps (4000)"]),
        (["cluster.k_min=20"], ["k_min (20)"]),
        (["train.label_dropout=1.0"], ["train.label_dropout"]),
        (["model.beta_schedule=cosine"], ["model.beta_schedule"]),
        (["rank.feature_block=3"], ["rank.feature_block (3)"]),
        (["embed.size=65"], ["embed.size (65)"]),
        (["score.holdout=0.2"], ["score", "holdout (0.2)", "cotypicality"]),
        (["score.cotypicality=true", "score.holdout=1"], ["score.holdout"]),
        (["score.adaptive=true", "score.cotypicality=true"], ["score", "adaptive", "cotypicality"]),
        (["score.adaptive=true", "score.contrast=true"], ["score", "adaptive", "contrast"]),
        (["score.adaptive_first=1"], ["score.adaptive_first", "1"]),
        (["score.adaptive_z=0"], ["score.adaptive_z", "0"]),
        (["score.adaptive_rule=bandit"], ["score.adaptive_rule", "bandit"]),
        (["score.adaptive_decide=-1"], ["score.adaptive_decide", "-1"]),
        (["score.adaptive_variance=pooled"], ["score.adaptive_variance", "pooled"]),
        (["translate.strength=1.5"], ["translate.strength", "1.5"]),
        (["baseline.cell_size=1"], ["baseline.cell_size"]),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    msg = str(err.value)
    assert msg.startswith("invalid configuration")
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_several_errors_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["train.steps=abc", "rank.per_image=0"])
    assert "train.steps" in str(err.value) and "rank.per_image" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("train.steps", "key=value"), ("train..steps=3", "empty key part"), ("x.y=[1", "not valid YAML")],
)
def test_bad_override_syntax(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_override(text)


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_settings(None, ["train=3", "train.steps=4"])


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("train.steps=500") == (["train", "steps"], 500)
    assert parse_override("model.block_out_channels=[8, 16]") == (["model", "block_out_channels"], [8, 16])
    assert parse_override("cluster.k=") == (["cluster", "k"], None)
    assert parse_override("runtime.device=cuda:1") == (["runtime", "device"], "cuda:1")


def test_yaml_file_with_overrides(tmp_path) -> None:
    cfg = tmp_path / "gcmine.yaml"
    cfg.write_text("train:\n  steps: 300\n  lr: 0.001\nscore:\n  draws: 4\ndata:\n  resolution: 64\n")
    s = load_settings(cfg, ["train.steps=42", "rank.per_image=3"])
    assert s.train.steps == 42  # --set wins over the file
    assert s.train.lr == 0.001 and s.score.draws == 4 and s.data.resolution == 64
    assert s.rank.per_image == 3
    assert load_settings(str(cfg)).train.steps == 300


def test_yaml_file_errors_name_the_file(tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "train.stepz" in str(err.value) and str(cfg) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(tmp_path / "broken.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_settings(tmp_path / "empty.yaml") == Settings()


def test_describe_settings_mentions_every_section_and_marks_changes() -> None:
    s = load_settings(None, ["train.steps=42", "score.draws=12"])
    text = describe_settings(s)
    for section in Settings.model_fields:
        assert f"\n{section}:" in text
    lines = text.splitlines()
    steps = next(line for line in lines if line.strip().startswith("steps:"))
    draws = next(line for line in lines if line.strip().startswith("draws:"))
    lr = next(line for line in lines if line.strip().startswith("lr:"))
    assert "42" in steps and "#*" in steps and "default: None" in steps
    assert "12" in draws and "#*" in draws and "default: 16" in draws
    assert "#*" not in lr and "default:" not in lr
    assert "#*" not in describe_settings(Settings())
    # every field of every section is listed
    for section in Settings.model_fields:
        for name in type(getattr(s, section)).model_fields:
            assert any(line.startswith(f"  {name}:") for line in lines), (section, name)


def test_train_budget() -> None:
    assert TrainConfig(steps=123).budget(10_000) == 123
    t = TrainConfig()  # epochs 40, batch 32, [1000, 4000]
    assert t.budget(100) == 1000  # ceil(125) clipped up
    assert t.budget(2000) == 2500
    assert t.budget(10_000) == 4000  # 12500 clipped down
    # measured on the pixel model only (RESULTS.md 12g): a checkpoint keeps 500
    assert Settings.from_dict({"model": {"base": "/sd"}}).train.min_steps == 500
    # a default min_steps never exceeds the user's own max_steps (their cap); their own min_steps is checked
    assert Settings.from_dict({"train": {"max_steps": 800}}).train.budget(100) == 800
    assert Settings.from_dict({"train": {"max_steps": 300}, "model": {"base": "/sd"}}).train.min_steps == 300
    with pytest.raises(ConfigError, match=r"min_steps \(900\) must not exceed max_steps \(800\)"):
        Settings.from_dict({"train": {"min_steps": 900, "max_steps": 800}})
    assert TrainConfig(epochs=1.5, batch_size=10, min_steps=1, max_steps=100).budget(21) == 4  # ceil(3.15)
    with pytest.raises(ValidationError, match="min_steps"):
        TrainConfig(min_steps=10, max_steps=5)


def test_v_prediction_pixel_model_gets_twice_the_automatic_budget() -> None:
    """RESULTS.md 10c: the v model needs twice the eps model's steps on the demo; its defaults say so."""
    v = load_settings(overrides=["model.prediction=v_prediction"])
    assert (v.train.epochs, v.train.min_steps) == (80.0, 2000)
    assert v.train.budget(400) == 2000 and Settings().train.budget(400) == 1000  # the demo's 400 images
    assert v.train.budget(1000) == 2 * Settings().train.budget(1000) == 2500
    assert v.train.budget(2000) == 4000  # 2 x 2500, capped at max_steps
    # what the user sets wins; a default min_steps never exceeds the user's own cap
    assert load_settings(overrides=["model.prediction=v_prediction", "train.steps=300"]).train.budget(400) == 300
    capped = load_settings(overrides=["model.prediction=v_prediction", "train.max_steps=800"]).train
    assert (capped.min_steps, capped.budget(400)) == (800, 800)
    assert load_settings(overrides=["model.prediction=v_prediction", "train.min_steps=600"]).train.min_steps == 600
    for other in ("epsilon", "flow_matching"):
        assert load_settings(overrides=[f"model.prediction={other}"]).train == Settings().train
    text = describe_settings(v)
    assert "# model.prediction=v_prediction: its defaults (unless set): train.epochs=80.0, train.min_steps=2000" in text
    assert "model.prediction" not in describe_settings(Settings()).splitlines()[1]


def test_sections_are_frozen_and_strict() -> None:
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.train.steps = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="t_min"):
        ScoreConfig(t_min=0.5, t_max=0.5)


def test_gcmodels_does_not_import_prefect(fresh_imports) -> None:
    modules = [
        "gcmodels",
        "gcmodels.config",
        "gcmodels.diffusion",
        "gcmodels.mining.typicality",
        "gcmodels.mining.patches",
        "gcmodels.diffusion.training",
        "gcmodels.data.images",
        "gcmodels.mining.elements",
        "gcmodels.clustering.estimators",
        "gcmodels.embedding.pca",
        "gcmodels.data.synthetic",
        "gcmodels.mining.evaluation",
        "gcmodels.runtime",
    ]
    # fresh_imports: a fresh Python that imported these among all the import-isolation tests' modules
    assert set(modules) <= set(MODULES), "name them in MODULES of tests/support/fresh_imports.py"
    assert not loaded(fresh_imports, "prefect"), fresh_imports["first_imported_by"]


def test_model_base_fills_the_papers_defaults_unless_given() -> None:
    from gcmodels.config import BASE_MODEL_DEFAULTS

    s = Settings.from_dict({"model": {"base": "/models/sd15"}, "train": {"lr": 3e-4}, "data": {"resolution": 512}})
    assert (s.data.resolution, s.data.resize) == (512, "short_side")
    assert s.train.lr == 3e-4  # given: kept
    assert s.train.checkpoint_minutes == 15 and Settings().train.checkpoint_minutes is None  # by time with a checkpoint
    assert s.train.lr_schedule == "constant" and s.train.label_dropout == BASE_MODEL_DEFAULTS["train"]["label_dropout"]
    assert (s.rank.feature_block, s.rank.feature_t, s.rank.feature_draws) == (1, 0.161, 8)
    assert s.patch_size == round(0.2 * 512)
    plain = Settings()
    # the pixel model keeps the aspect ratio and trains on square crops (RESULTS.md 12); model.base never crops
    assert (plain.data.resolution, plain.data.resize, plain.train.lr) == (64, "short_side", 2e-3)
    assert plain.train.square_crops is True and not s.train.square_crops
    assert Settings.from_dict({"data": {"resize": "square"}}).train.square_crops is False
    assert Settings.from_dict({"train": {"square_crops": False}}).train.square_crops is False


def test_checkpoint_defaults_layer_over_the_base_defaults_and_lora_above_2b() -> None:
    from gcmodels.config import LORA_DEFAULT_RANK, checkpoint_defaults

    family = {"data": {"resolution": 1024}, "rank": {"feature_block": 0}}
    small = checkpoint_defaults(family, 860_000_000)
    assert small == family and "train" not in small
    big = checkpoint_defaults(family, 2_600_000_000)
    assert big["train"] == {"lora_rank": LORA_DEFAULT_RANK} and big["data"] == {"resolution": 1024}
    s = Settings.from_dict({"model": {"base": "/sdxl"}, "train": {"lr": 3e-4}}, big)
    assert (s.data.resolution, s.data.resize, s.rank.feature_block, s.train.lora_rank) == (
        1024,
        "short_side",
        0,
        LORA_DEFAULT_RANK,
    )
    assert s.train.lr == 3e-4 and s.train.lr_schedule == "constant"  # given, and the common base defaults
    full = Settings.from_dict({"model": {"base": "/sdxl"}, "train": {"lora_rank": 0}, "data": {"resolution": 512}}, big)
    assert (full.train.lora_rank, full.data.resolution) == (0, 512)  # what the user sets wins
    assert Settings.from_dict({}, big).data.resolution == 64  # no model.base: no checkpoint defaults


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"prompt_template": "A {x} of {label}"}}, "exactly once"),
        ({"model": {"prompt_template": "no label here"}}, "exactly once"),
        ({"data": {"resize": "short_side", "resolution": 68}}, "divisible by 8"),
        ({"data": {"resolution": 30}, "model": {"latent_factor": 1}}, "divisible by 4"),
        ({"train": {"lora_rank": 4}}, "needs model.base"),
        ({"model": {"base": "/sd"}, "data": {"resolution": 100}}, "multiple of 8"),
        ({"runtime": {"precision": "fp8"}}, "precision"),
        ({"model": {"base": "/sd", "prediction": "v_prediction"}}, "applies to the pixel model"),
        ({"model": {"class_map": "map.csv"}}, "model.class_map .* needs model.base"),
        ({"model": {"prediction": "x0"}}, "model.prediction"),
        (
            {"train": {"square_crops": True}, "data": {"resize": "square"}},
            "train.square_crops .* data.resize=short_side",
        ),
        (
            {"train": {"square_crops": True}, "data": {"resize": "short_side"}, "model": {"base": "/sd"}},
            "train.square_crops applies to the pixel model",
        ),
        ({"data": {"label_separator": 3}}, "label_separator"),
        ({"model": {"base": "/sd", "latent_factor": 2}}, r"latent_factor \(2\) applies to the pixel model.*leave it 1"),
    ],
)
def test_model_base_settings_are_checked(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(values)


def test_pixel_model_short_side_rounds_to_its_downsampling_factor() -> None:
    """data.resize=short_side works for the small pixel model: the long side is rounded to a
    multiple of the UNet's downsampling factor 2^(levels - 1), and to the VAE's 8 with model.base."""
    s = Settings.from_dict({"data": {"resize": "short_side"}})
    assert (s.data.resize, s.working_multiple) == ("short_side", 8)  # (32, 64, 64): three levels, on 2x latents
    pixel = {"latent_factor": 1}
    assert Settings.from_dict({"model": pixel}).working_multiple == 4
    assert Settings.from_dict({"model": {**pixel, "block_out_channels": [16, 32]}}).working_multiple == 2
    assert Settings.from_dict({"model": {**pixel, "block_out_channels": [8, 16, 32, 32]}}).working_multiple == 8
    assert Settings.from_dict({"model": {"latent_factor": 4, "block_out_channels": [16, 32]}}).working_multiple == 8
    assert Settings.from_dict({"model": {"base": "/sd"}, "data": {"bucket": None}}).working_multiple == 8


def test_shape_buckets_with_model_base() -> None:
    """With model.base the long side snaps to 64 px buckets (data.bucket), at most an eighth of
    the resolution (whole VAE factors) so that no aspect ratio moves by more than ~6 %; a bucket
    that is not a multiple of the downsampling factor is refused."""
    base = {"model": {"base": "/sd"}}
    assert Settings.from_dict(base).working_multiple == 32  # 256 px
    assert Settings.from_dict({**base, "data": {"resolution": 512}}).working_multiple == 64
    assert Settings.from_dict({**base, "data": {"resolution": 1024}}).working_multiple == 64
    assert Settings.from_dict({**base, "data": {"resolution": 16}}).working_multiple == 8
    pixel = {"resolution": 64, "resize": "short_side"}  # the pixel model's factor: 4
    assert Settings.from_dict({"data": {**pixel, "bucket": 8}}).working_multiple == 8
    with pytest.raises(ConfigError, match=r"data.bucket \(12\) must be a multiple of 8"):
        Settings.from_dict({**base, "data": {"bucket": 12}})


def test_train_processes_must_divide_the_batch_and_fit_the_gpus(monkeypatch) -> None:
    """train.processes: the global batch is split evenly (a ConfigError naming both settings), and
    on CUDA each process needs a card of its own from runtime.device's on (checked before any work)."""
    import torch

    from gcmodels.runtime import data_parallel_devices

    assert Settings.from_dict({"train": {"batch_size": 8, "processes": 2}}).train.processes == 2
    with pytest.raises(ConfigError, match=r"train.batch_size \(6\) must be divisible by train.processes \(4\)"):
        Settings.from_dict({"train": {"batch_size": 6, "processes": 4}})
    cpu = torch.device("cpu")
    assert data_parallel_devices(1, cpu) == [cpu] and data_parallel_devices(2, cpu) == [cpu, cpu]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert data_parallel_devices(2, torch.device("cuda", 1)) == [torch.device("cuda", 1), torch.device("cuda", 2)]
    assert data_parallel_devices(4, torch.device("cuda")) == [torch.device("cuda", i) for i in range(4)]
    with pytest.raises(ConfigError, match=r"train.processes=3 needs 3 CUDA devices .*cuda:2 to cuda:4.* has 4"):
        data_parallel_devices(3, torch.device("cuda", 2))
    with pytest.raises(ConfigError, match=r"train\.processes=2 runs one process per CUDA device"):
        data_parallel_devices(2, torch.device("mps"))


def test_label_contrast_is_the_default_where_there_is_something_to_contrast() -> None:
    """score.contrast null (default): label contrast with 2 labels or more, one rival per draw ('cycled', the
    cost of plain scoring), every label with cotypicality (scored anyway); typicality maps with one label,
    with adaptive draws, or when switched off."""
    from gcmodels.config import ScoreConfig

    default = ScoreConfig()
    assert default.contrast is None and default.contrast_rivals == "cycled"
    assert [default.contrast_mode(n) for n in (1, 2, 40)] == [None, "cycled", "cycled"]
    assert ScoreConfig(cotypicality=True).contrast_mode(3) == "all"
    assert ScoreConfig(contrast_rivals="all").contrast_mode(3) == "all"
    assert ScoreConfig(adaptive=True).contrast_mode(3) is None
    assert ScoreConfig(contrast=False).contrast_mode(3) is None
    assert ScoreConfig(contrast=True).contrast_mode(2) == "cycled"
    with pytest.raises(ValueError, match=r"score.contrast=true needs 2 labels or more, this run has 1: set score"):
        ScoreConfig(contrast=True).contrast_mode(1)


def test_feature_pool_default_follows_the_model() -> None:
    """rank.feature_pool null: 'typical' for the pixel model on its autoencoder's latents (the default
    model), 'mean' (the paper's) on pixels and for checkpoints; a value the user gives is kept."""
    assert Settings().rank.feature_pool == "typical"
    assert load_settings(None, ["model.latent_factor=1", "data.resolution=32"]).rank.feature_pool == "mean"
    assert load_settings(None, ["model.latent_factor=4"]).rank.feature_pool == "typical"
    assert Settings.from_dict({"model": {"base": "/models/sd15"}}).rank.feature_pool == "mean"
    assert load_settings(None, ["rank.feature_pool=mean"]).rank.feature_pool == "mean"
    assert load_settings(None, ["model.latent_factor=1", "rank.feature_pool=typical"]).rank.feature_pool == "typical"
    s = Settings()
    assert Settings.from_dict(s.model_dump()) == s  # a stored run's settings read back the same


@pytest.mark.parametrize(("resolution", "factor"), [(16, 1), (32, 1), (48, 1), (64, 2), (128, 2)])
def test_latent_factor_default_follows_the_resolution(resolution: int, factor: int) -> None:
    """model.latent_factor unset: the latent model from data.resolution 64 up (a UNet grid of 32 or more);
    below, the UNet on pixels, so that a settings file written for the former default (data.resolution 32)
    keeps that model exactly instead of a 16 x 16 latent grid. A value the user gives is kept."""
    s = load_settings(None, [f"data.resolution={resolution}"])
    assert s.model.latent_factor == factor
    assert s.rank.feature_pool == ("typical" if factor > 1 else "mean")
    if factor == 1:
        assert s == load_settings(None, [f"data.resolution={resolution}", "model.latent_factor=1"])
    given = load_settings(None, [f"data.resolution={resolution}", "model.latent_factor=2"])
    assert given.model.latent_factor == 2 and given.rank.feature_pool == "typical"
    assert Settings.from_dict(s.model_dump()) == s
