"""The module paths before the layers were split still import, for one release, warning
that they are deprecated and lending the new modules' names (the same objects)."""

import importlib
import sys

import pytest

from capsnet._deprecated import MOVED


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
