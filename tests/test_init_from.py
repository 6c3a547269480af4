"""init_from: a new run starts from an existing BERT's weights (pretrain/init_from.py)."""

import shutil

import pytest
import torch
from launching import explain, metrics, run_pretrain
from synthetic_data import make_data_dir
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel

from pretrain.init_from import InitFromError, check_tokenizer, load_source_weights

TINY = dict(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("init") / "data", train_shards=2, samples_per_shard=48)


@pytest.mark.slow
def test_continued_run_starts_where_the_source_ended(tmp_path, data_dir):
    """The continued run's first logged losses (its step-0 eval) equal the source run's last (its final eval)."""
    exact = ["precision=fp32", "zero_stage=0"]  # fp32 weights exported as trained: bit-exact
    source = run_pretrain(data_dir, tmp_path / "source", "max_steps=6", *exact, ranks=1)
    assert source.returncode == 0, explain(source)
    export = tmp_path / "source" / "export"
    continued = run_pretrain(
        data_dir, tmp_path / "continued", f"init_from={export}", "max_steps=2", *exact, ranks=1
    )
    assert continued.returncode == 0, explain(continued)
    assert f"init_from {export}:" in continued.stdout and "nothing initialised" in continued.stdout
    last = metrics(tmp_path / "source", "eval")[-1]
    first = metrics(tmp_path / "continued", "eval")[0]
    # the export's model card carries the run's numbers
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: fill-mask" in card
    tokens = metrics(tmp_path / "source")[-1]["tokens"]
    assert f"6 optimizer steps, {tokens:,} tokens seen" in card and "hardware: 1 x " in card
    assert " minutes (all launches)" in card  # run_wall_time_s: every launch's training time
    assert f"MLM accuracy {last['mlm_acc']:.4f}" in card and f"NSP accuracy {last['nsp_acc']:.4f}" in card
    assert "training examples: 96," in card and "AutoModelForPreTraining.from_pretrained" in card
    assert f"continuing from `{export}`" in (tmp_path / "continued" / "export" / "README.md").read_text()
    assert last["step"] == 6 and first["step"] == 0
    for key in ("mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"):
        assert first[key] == last[key], (key, first[key], last[key])
    # a fresh model on the same data starts at chance, far from the source's loss
    assert metrics(tmp_path / "source", "train")[0]["mlm_loss"] > last["mlm_loss"] + 0.5
    # relaunching resumes the continued run from its own checkpoint, without reloading the source
    again = run_pretrain(
        data_dir, tmp_path / "continued", f"init_from={export}", "max_steps=3", *exact, ranks=1
    )
    assert again.returncode == 0 and "resumed from step00000002" in again.stdout, explain(again)
    assert "tensors loaded" not in again.stdout


def test_heads_missing_from_a_bertmodel_are_initialised_and_listed(tmp_path):
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY)).save_pretrained(tmp_path / "encoder")
    target = BertForPreTraining(BertConfig(**TINY))
    report = load_source_weights(target, tmp_path / "encoder")
    source = BertModel.from_pretrained(tmp_path / "encoder")
    assert torch.equal(
        target.bert.encoder.layer[0].output.dense.weight, source.encoder.layer[0].output.dense.weight
    )
    assert torch.equal(
        target.cls.predictions.decoder.weight, source.embeddings.word_embeddings.weight
    )  # tied
    assert set(report.initialised) == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    assert "cls.seq_relationship.{weight,bias}" in report.describe()


def test_an_mlm_source_leaves_the_pooler_and_nsp_head_to_initialise(tmp_path):
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(tmp_path / "mlm")
    report = load_source_weights(BertForPreTraining(BertConfig(**TINY)), tmp_path / "mlm")
    assert {k.rpartition(".")[0] for k in report.initialised} == {"bert.pooler.dense", "cls.seq_relationship"}
    # the other way round, the NSP head has no place in an mlm run: listed as unused
    BertForPreTraining(BertConfig(**TINY)).save_pretrained(tmp_path / "pt")
    report = load_source_weights(BertForMaskedLM(BertConfig(**TINY)), tmp_path / "pt")
    assert not report.initialised and "cls.seq_relationship.weight" in report.unused


def test_a_tensor_of_another_shape_is_one_line_naming_it(tmp_path):
    BertForPreTraining(BertConfig(**TINY)).save_pretrained(tmp_path / "src")
    target = BertForPreTraining(BertConfig(**{**TINY, "intermediate_size": 96}))
    with pytest.raises(
        InitFromError,
        match=r"tensor bert\.encoder\.layer\.0\.intermediate\.dense\.(weight|bias) has shape \(64",
    ):
        load_source_weights(target, tmp_path / "src")


def test_data_of_another_tokenizer_is_refused_with_the_prep_command(tmp_path, data_dir):
    from data_prep.manifest import load_manifest

    other = make_data_dir(
        tmp_path / "other", train_shards=1, samples_per_shard=8, valid_samples=8, vocab_size=300
    )
    model = tmp_path / "model"
    BertForPreTraining(BertConfig(**TINY)).save_pretrained(model)
    shutil.copytree(data_dir / "tokenizer", model, dirs_exist_ok=True)
    check_tokenizer(
        model, data_dir, data_dir / "tokenizer", load_manifest(data_dir), 200
    )  # the same tokenizer passes
    with pytest.raises(InitFromError) as err:
        check_tokenizer(model, other, other / "tokenizer", load_manifest(other), 200)
    message = str(err.value)
    assert "\n" not in message and "200 tokens" in message and "300" in message
    assert f"tokenizer.path={model}" in message
    manifest = load_manifest(data_dir)
    manifest["tokenizer"]["special_ids"]["mask"] = 7
    with pytest.raises(InitFromError, match=r"special token ids differ .*mask 4 vs 7"):
        check_tokenizer(model, data_dir, data_dir / "tokenizer", manifest, 200)
