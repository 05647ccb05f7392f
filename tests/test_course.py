"""course.py, the one table of the course variants: its derived facts, and how a skeleton's copy
(THIS_COURSE set) narrows what the tools offer."""

import pytest

import course


def test_the_reference_accuracies_are_designs_table():
    """DESIGN.md, "Reference results": the rubric's numbers."""
    luh, cmu = course.COURSES["rmsnorm"].reference_accuracy(), course.COURSES["layernorm"].reference_accuracy()
    assert luh == {("sst", "prompting"): {"dev": 0.213, "test": 0.224}, ("cfimdb", "prompting"): {"dev": 0.502},
                   ("sst", "finetuning"): {"dev": 0.414, "test": 0.418}, ("cfimdb", "finetuning"): {"dev": 0.800}}
    assert cmu[("sst", "lora")] == {"dev": 0.275, "test": 0.269} and cmu[("cfimdb", "lora")] == {"dev": 0.510}
    assert cmu[("cfimdb", "finetuning")] == {"dev": 0.833} and len(cmu) == 6


def test_each_course_names_its_options_files_and_outputs():
    luh, cmu = course.COURSES["rmsnorm"], course.COURSES["layernorm"]
    assert luh.options == ("generate", "prompt", "finetune") and cmu.options == luh.options + ("lora",)
    assert course.method_modules() == {"lora.py", *course.SOLUTION_ONLY_MODULES} and "lora.py" in cmu.student_code
    assert "ia3.py" in course.method_modules() and "training.py" not in course.method_modules()
    assert "sst-test-lora-output.txt" in cmu.output_files() and "sst-test-lora-output.txt" not in luh.output_files()
    assert {"generated-sentence-temp-0.txt", "cfimdb-dev-prompting-output.txt"} <= luh.output_files()
    assert [course.output_name(o) for o in ("prompt", "finetune", "lora", "ia3")] == \
        ["prompting", "finetuning", "lora", "ia3"]


def test_the_solution_has_every_course_and_a_skeleton_one(monkeypatch):
    solution_options = ("generate", "prompt", "finetune", "lora", "pretrain")
    assert course.THIS_COURSE is None and [c.name for c in course.here()] == ["rmsnorm", "layernorm"]
    assert course.shipped_options(solution_options) == solution_options
    assert course.COURSES["layernorm"].reference_file(course.OPTIMIZER_REFERENCE) == "optimizer_test_clip0.9.npy"

    monkeypatch.setattr(course, "THIS_COURSE", "rmsnorm")
    assert [c.name for c in course.here()] == ["rmsnorm"] and course.default().name == "rmsnorm"
    assert course.shipped_options(solution_options) == ("generate", "prompt", "finetune")
    assert course.COURSES["rmsnorm"].reference_file(course.SANITY_REFERENCE) == "sanity_check.data"


@pytest.mark.parametrize("name", list(course.COURSES))
def test_each_course_ships_the_three_upstream_reference_names(name):
    references = dict(course.COURSES[name].references)
    assert set(references) == {course.ROPE_REFERENCE, course.OPTIMIZER_REFERENCE, course.SANITY_REFERENCE}
