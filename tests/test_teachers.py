import pytest
import torch

from dho.config import TeacherConfig
from dho.teachers import build_teacher, get_templates
from dho.teachers.synthetic import SyntheticTeacher

CLASSES = ["golden_retriever", "tabby cat", "airplane"]


@pytest.fixture(scope="module")
def rn50_teacher():
    torch.manual_seed(0)
    return build_teacher(TeacherConfig(kind="openclip", model="RN50", templates="imagenet7"), CLASSES)


def test_openclip_logits_equal_open_clip_zero_shot_path(rn50_teacher):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model = rn50_teacher.model
    tokenizer = open_clip.get_tokenizer("RN50")
    names = [c.replace("_", " ") for c in CLASSES]
    weights = build_zero_shot_classifier(model, tokenizer, names, get_templates("imagenet7"), num_classes_per_batch=2)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.encode_image((images.float() / 255 - mean) / std, normalize=True)
        expected = 100.0 * feats @ weights
    out = rn50_teacher(images)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.features.norm(dim=-1), torch.ones(2))


def test_openclip_teacher_is_frozen(rn50_teacher):
    assert all(not p.requires_grad for p in rn50_teacher.parameters())
    rn50_teacher.train()
    assert not rn50_teacher.training and not rn50_teacher.model.training
    assert rn50_teacher.image_size == 224 and rn50_teacher.id == "openclip:RN50:random"


def test_openclip_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained=str(tmp_path / "nope.pt")), CLASSES)


def test_zero_shot_head_is_mean_of_normalised_prompt_embeddings():
    teacher = SyntheticTeacher(embed_dim=16)
    templates = ("a photo of a {}.", "art of the {}.")
    teacher.set_classes(CLASSES, templates)
    for i, name in enumerate(CLASSES):
        rows = torch.nn.functional.normalize(teacher.embed_prompts(name, templates), dim=-1)
        w = rows.mean(0) / rows.mean(0).norm()
        torch.testing.assert_close(teacher.class_embeddings[i], w)
    images = torch.rand(4, 3, 32, 32)
    out = teacher(images)
    torch.testing.assert_close(out.logits, out.features @ teacher.class_embeddings.t() / 0.01)


def test_synthetic_teacher_is_deterministic():
    a = build_teacher(TeacherConfig(kind="synthetic", seed=3), CLASSES)
    b = build_teacher(TeacherConfig(kind="synthetic", seed=3), CLASSES)
    c = build_teacher(TeacherConfig(kind="synthetic", seed=4), CLASSES)
    x = torch.rand(3, 3, 40, 40)
    assert torch.equal(a(x).logits, b(x).logits)
    assert not torch.allclose(a(x).logits, c(x).logits)


def test_zeta_scales_logits():
    a = build_teacher(TeacherConfig(kind="synthetic", zeta=0.01), CLASSES)
    b = build_teacher(TeacherConfig(kind="synthetic", zeta=0.02), CLASSES)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a(x).logits, 2 * b(x).logits)


def test_template_sets():
    assert len(get_templates("imagenet7")) == 7
    assert get_templates("oxford_pets") == ("a photo of a {}, a type of pet.",)
    assert get_templates("eurosat") == ("a centered satellite photo of {}.",)
    assert get_templates("a {} here.|the {}.") == ("a {} here.", "the {}.")
    with pytest.raises(ValueError, match="unknown template set"):
        get_templates("imagenet8")


def test_fold_batchnorm_keeps_outputs():
    import timm

    from dho.teachers.base import fold_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=5, bn_eps=1e-3, pad_type="same")
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    bn_count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == bn_count == 49
        after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)



def test_cpu_chunked_forward_matches_whole_batch(rn50_teacher, monkeypatch):
    """On the CPU a teacher runs its rows in chunks; the outputs stay those of one whole-batch
    forward, rows in order."""
    from dho.device import cpu_chunk_rows

    assert cpu_chunk_rows("cpu", 224) == 4 and cpu_chunk_rows("cpu", 64) == 32 and cpu_chunk_rows("cuda", 224) == 0
    torch.manual_seed(1)
    images = torch.randint(0, 256, (11, 3, 224, 224), dtype=torch.uint8)
    calls = []
    hook = rn50_teacher.model.visual.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        chunked = rn50_teacher(images)
        monkeypatch.setattr(rn50_teacher, "cpu_chunks", False)
        whole = rn50_teacher(images)
    finally:
        hook.remove()
    assert calls == [4, 4, 3, 11]
    torch.testing.assert_close(chunked.features, whole.features, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=0, atol=1e-3)


def test_vit_teacher_at_another_size_interpolates_its_positional_embeddings(tmp_path, tiny_clip):
    """A CLIP ViT teacher asked for a non-native input size is built for it, and its pretrained
    positional embeddings are interpolated to the new grid; a CLIP ResNet refuses."""
    import open_clip

    torch.manual_seed(0)
    native = open_clip.create_model(tiny_clip)
    torch.save(native.state_dict(), tmp_path / "tiny.pt")
    teacher = build_teacher(TeacherConfig(kind="openclip", model=tiny_clip, pretrained=str(tmp_path / "tiny.pt"),
                                          image_size=48, templates="a {}"), CLASSES)
    grid = teacher.model.visual.positional_embedding
    assert teacher.image_size == 48 and grid.shape[0] == (48 // 16) ** 2 + 1
    assert torch.equal(grid[0], native.visual.positional_embedding[0])  # the class token's embedding is kept
    out = teacher(torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8))
    assert out.logits.shape == (2, len(CLASSES))
    assert torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="runs only at its native 224 px"):
        build_teacher(TeacherConfig(kind="openclip", model="RN50", image_size=160), CLASSES)


def test_openai_rn50_teacher_from_a_local_file_gets_quick_gelu(rn50_teacher, tmp_path):
    """open_clip builds `RN50` with nn.GELU; OpenAI's weights were trained with QuickGELU (its
    `RN50-quickgelu`). A teacher given OpenAI's weights as a local file must run QuickGELU."""
    import open_clip
    from open_clip.transformer import QuickGELU

    from dho.teachers.openclip import wants_quick_gelu

    cache = tmp_path / "models--timm--resnet50_clip.openai" / "snapshots" / "0"  # the Hugging Face cache layout
    cache.mkdir(parents=True)
    weights = cache / "open_clip_pytorch_model.bin"
    torch.save(rn50_teacher.model.state_dict(), weights)  # random weights standing in for OpenAI's
    assert wants_quick_gelu("RN50", "openai") and wants_quick_gelu("RN50", str(weights))
    assert wants_quick_gelu("RN50", "yfcc15m")  # trained with QuickGELU too, says open_clip
    assert not wants_quick_gelu("ViT-B-32", "laion2b_s34b_b79k") and not wants_quick_gelu("RN50-quickgelu", "openai")

    def activations(teacher):
        return {type(m) for m in teacher.model.transformer.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}

    teacher = build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained=str(weights)), CLASSES)
    assert activations(teacher) == {QuickGELU}
    reference = open_clip.create_model("RN50-quickgelu", pretrained=str(weights))  # OpenAI's architecture, by name
    tokens = open_clip.get_tokenizer("RN50")(["a photo of a cat."])
    with torch.no_grad():
        torch.testing.assert_close(teacher.model.encode_text(tokens), reference.encode_text(tokens))
    plain = build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained=str(weights), quick_gelu=False), CLASSES)
    assert activations(plain) == {torch.nn.GELU}
    assert not torch.allclose(plain.class_embeddings, teacher.class_embeddings, atol=1e-4)  # the activation matters


def test_torchscript_archives_are_openai_checkpoints(tmp_path):
    from dho.teachers.openclip import wants_quick_gelu

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "RN50.pt")  # OpenAI ships TorchScript
    torch.save({"w": torch.zeros(1)}, tmp_path / "laion.pt")
    assert wants_quick_gelu("RN50", str(tmp_path / "RN50.pt")) and not wants_quick_gelu("RN50", str(tmp_path / "laion.pt"))


def test_every_teacher_kind_the_config_accepts_has_a_builder():
    import typing

    from dho.teachers import TEACHERS

    assert typing.get_args(typing.get_type_hints(TeacherConfig)["kind"]) == tuple(TEACHERS)


def test_openclip_tags_load_offline_from_the_hugging_face_cache(rn50_teacher, tmp_path, monkeypatch):
    """A tag whose weights a download left in the Hugging Face cache loads from there without the
    network; a tag on neither disk nor a reachable hub fails at once with the hint."""
    import huggingface_hub.constants

    import dho.teachers.openclip as openclip

    def no_network(timeout=3.0):
        raise AssertionError("the hub was asked although the weights are on disk")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(openclip, "_hub_reachable", no_network)
    repo = tmp_path / "models--timm--resnet50_clip.openai"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    weights = repo / "snapshots" / "abc" / "open_clip_pytorch_model.bin"
    torch.save(rn50_teacher.model.state_dict(), weights)
    assert openclip.cached_clip_weights("RN50", "openai") == str(weights)

    by_tag = build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained="openai"), CLASSES)
    by_file = build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained=str(weights)), CLASSES)
    assert by_tag.id == "openclip:RN50:openai"
    torch.testing.assert_close(by_tag.class_embeddings, by_file.class_embeddings)

    monkeypatch.setattr(openclip, "_hub_reachable", lambda timeout=3.0: False)
    assert openclip.cached_clip_weights("RN50", "yfcc15m") is None
    with pytest.raises(RuntimeError, match="not on this machine and the hub cannot be reached"):
        build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained="yfcc15m"), CLASSES)
    with pytest.raises(ValueError, match="no weights 'nosuch' for RN50"):
        build_teacher(TeacherConfig(kind="openclip", model="RN50", pretrained="nosuch"), CLASSES)
