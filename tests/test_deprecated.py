"""The module paths before the layers were split still import, for one release, warning
that they are deprecated and lending the new modules' names (the same objects)."""

import importlib
import sys

import pytest
import torch

from capsnet import create_model
from capsnet._deprecated import GONE, MOVED, RENAMED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_gives_the_new_modules_names(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*import {MOVED[old][0]}"):
        alias = importlib.import_module(old)
    for target in MOVED[old]:
        new = importlib.import_module(target)
        public = getattr(new, "__all__", None) or [n for n in vars(new) if not n.startswith("_")]
        assert all(getattr(alias, n) is getattr(new, n) for n in public), target


def test_names_of_the_old_paths_that_moved_elsewhere_still_resolve(monkeypatch):
    for old in ("capsnet.pretrained", "capsnet.checkpoint"):
        monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning):
        from capsnet.checkpoint import atomic_write, load_checkpoint

        from capsnet.pretrained import list_pretrained, load_pretrained
    from capsnet.files import atomic_write as new_write
    from capsnet.models.checkpoint import load_checkpoint as new_load
    from capsnet.training.pretrained import list_pretrained as new_list
    from capsnet.training.run import load_pretrained as new_pretrained

    assert (atomic_write, load_checkpoint) == (new_write, new_load)
    assert (list_pretrained, load_pretrained) == (new_list, new_pretrained)


def test_the_command_line_entry_point_is_where_pyproject_says():
    from capsnet.cli import main

    assert callable(main)


def test_the_warning_names_the_line_that_imports_the_old_path(monkeypatch):
    monkeypatch.delitem(sys.modules, "capsnet.bench", raising=False)
    with pytest.warns(DeprecationWarning) as record:
        import capsnet.bench  # noqa: F401
    assert record[0].filename == __file__


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("capsnet.data.split", "Task", "Recipe"),
        ("capsnet.data.custom", "task", "recipe"),
        ("capsnet.data.folder", "class_names", "class_folders"),
        ("capsnet.names", "PERTURBATIONS", "PERTURBATION_NAMES"),
        ("capsnet.models.figures", "PERTURBATIONS", "POSE_DELTAS"),
    ],
)
def test_an_old_name_in_a_module_warns_and_gives_the_new_object(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is deprecated.*{new}"):
        alias = getattr(mod, old)
    assert alias is getattr(mod, new)


def test_the_old_class_name_functions_of_custom_warn_and_still_answer():
    import capsnet.data.custom as custom

    with pytest.warns(DeprecationWarning, match="custom.class_names is deprecated"):
        assert custom.class_names("cifar10")[0] == "airplane"
    with pytest.warns(DeprecationWarning, match="custom.classes is deprecated"):
        assert custom.classes("svhn").num_classes == 10
    with pytest.warns(DeprecationWarning):
        assert custom.class_names("mnist") is None


def test_the_old_names_of_rundir_warn_and_give_run_s():
    import capsnet.training.rundir as rundir
    from capsnet.data.tasks import task_class_names
    from capsnet.training import run

    for old, new in (("load_run", run.load_run), ("load_pretrained", run.load_pretrained)):
        with pytest.warns(DeprecationWarning, match=f"rundir.{old} is deprecated"):
            assert getattr(rundir, old) is new
    with pytest.warns(DeprecationWarning, match="rundir.class_names is deprecated"):
        assert rundir.class_names("fashion-mnist", 10)[9] == "Ankle boot"
    assert task_class_names("fashion-mnist", 10)[9] == "Ankle boot"


def test_rundir_s_old_model_and_task_methods_warn_and_answer_as_run_s():
    from capsnet.training import Run, RunDir

    old, new = RunDir("capsnet-mnist"), Run("capsnet-mnist")
    with pytest.warns(
        DeprecationWarning, match="RunDir.class_names is deprecated.*class_names_for"
    ):
        assert old.class_names(10) == new.class_names_for(10)
    with pytest.warns(DeprecationWarning, match="RunDir.image_policy is deprecated"):
        assert old.image_policy == new.image_policy
    with pytest.warns(DeprecationWarning, match="RunDir.load_model is deprecated"):
        model = old.load_model()
    assert model.config == new.load_model().config


def _resolve(qualified: str):
    """The object at ``module.attr`` or ``module.Class.attr`` (on an instance for a class)."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise AssertionError(qualified)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_renamed_attribute_warns_and_names_the_new_one(old):
    new = RENAMED[old]
    if "Output" in old or "Model" in old:  # an attribute of instances
        model = create_model("capsnet-small")
        out = model(torch.rand(1, 1, 28, 28))
        owner = model if "Model" in old else out
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}"):
            value = getattr(owner, old.rpartition(".")[2])
        want = getattr(owner, new.rpartition(".")[2])
        assert value is want or torch.equal(torch.as_tensor(value), torch.as_tensor(want))
        return
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}"):
        value = _resolve(old)
    assert value is _resolve(new)


def test_a_module_without_the_old_name_still_raises_attribute_error():
    import capsnet.names

    with pytest.raises(AttributeError, match="no attribute 'NOPE'"):
        capsnet.names.NOPE  # noqa: B018


def test_the_old_em_routing_module_path_is_gone_and_the_function_stays(monkeypatch):
    import capsnet
    from capsnet.nn.em import em_routing

    for old in GONE:
        with pytest.raises(ModuleNotFoundError, match="capsnet.nn.em"):
            importlib.import_module(old)
    monkeypatch.delitem(sys.modules, "capsnet.nn.em_routing", raising=False)
    with pytest.warns(DeprecationWarning, match="import capsnet.nn.em"):
        importlib.import_module("capsnet.nn.em_routing")
    assert capsnet.em_routing is em_routing


def test_options_passed_by_position_as_in_0_1_warn_and_still_work():
    from capsnet import em_routing

    votes, acts = torch.randn(2, 6, 3, 16), torch.rand(2, 6)
    beta_u, beta_a = torch.zeros(3), torch.zeros(3)
    want = em_routing(votes, acts, beta_u, beta_a, iterations=2, final_beta=0.5)
    with pytest.warns(DeprecationWarning, match="em_routing: passing iterations, final_beta by"):
        got = em_routing(votes, acts, beta_u, beta_a, 2, 0.5)
    torch.testing.assert_close(got[:2], want[:2])
    with pytest.raises(TypeError):  # one value twice is the error it always was
        em_routing(votes, acts, beta_u, beta_a, 2, iterations=2)
