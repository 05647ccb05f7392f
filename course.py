"""The two courses this assignment is taught in, and every fact that tells them apart.

One table, COURSES, read by every tool that depends on the course: the submission check
(prepare_submit.py), the grader checks (optimizer_test.py, sanity_check.py), the student checks
(tests/student), the skeleton generator and the autograder (instructor/).

  rmsnorm    the LUH course: RMSNorm, plain temperature sampling, AdamW without gradient
             clipping, no LoRA
  layernorm  the 2025 CMU course: LayerNorm, epsilon sampling, clipping, LoRA

The instructors' solution holds both (THIS_COURSE is None); a student skeleton holds one, and
instructor/make_skeleton.py writes its name into THIS_COURSE. Both courses publish their grader
reference files under the same upstream names with different contents: the solution keeps each
under an explicit name, a skeleton ships its own under the upstream name.

A new classification method is one entry in a course's `methods` (or, for a method no course
teaches, in SOLUTION_ONLY_METHODS): its `--option`, the word in its output names, the module
that holds it (shipped only to the courses that have the method) and its reference accuracies.
"""

from dataclasses import dataclass

THIS_COURSE: str | None = None  # None: the instructors' solution, which has every course


@dataclass(frozen=True)
class Method:
    """One way to classify with the model, run by `run_llama.py --option OPTION`."""
    option: str
    output: str  # its prediction files: <dataset>-<dev|test>-<output>-output.txt
    module: str | None = None  # the student file only this method needs (None: shared code)
    accuracy: tuple = ()  # upstream reference (DESIGN.md): ((dataset, split, accuracy), ...)


@dataclass(frozen=True)
class Course:
    name: str
    description: str
    norm: str  # LlamaConfig.norm_type of the course, and of its sanity reference
    epsilon: float  # generate's default epsilon: 0 is plain temperature sampling
    max_grad_norm: float | None  # AdamW's clipping in the optimizer reference; None: no clipping at all
    methods: tuple[Method, ...]
    solved: frozenset = frozenset()  # solution regions that stay solved: not this course's exercise
    references: tuple = ()  # (upstream name it ships under, explicit name in the solution), ...

    @property
    def options(self) -> tuple[str, ...]:
        """The `run_llama.py --option` values of this course."""
        return ("generate", *(method.option for method in self.methods))

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(method.module for method in self.methods if method.module)

    @property
    def student_code(self) -> tuple[str, ...]:
        """The files holding a student's code, which a submission must contain."""
        return STUDENT_CODE + self.modules

    def output_files(self) -> frozenset[str]:
        """The run outputs a submission must contain (upstream's prepare_submit.py list)."""
        return frozenset({*GENERATION_FILES, *(f"{dataset}-{split}-{method.output}-output.txt"
                                               for method in self.methods for dataset in DATASETS
                                               for split in SPLITS)})

    def reference_accuracy(self) -> dict[tuple[str, str], dict[str, float]]:
        """{(dataset, output word): {split: accuracy}}: the table the rubric compares with."""
        table = {}
        for method in self.methods:
            for dataset, split, accuracy in method.accuracy:
                table.setdefault((dataset, method.output), {})[split] = accuracy
        return table

    def explicit_reference(self, upstream: str) -> str:
        """The explicit name (as in the solution and in assets/reference) of one reference file."""
        return dict(self.references)[upstream]

    def reference_file(self, upstream: str) -> str:
        """The name one of this course's grader reference files has in this copy of the code."""
        return self.explicit_reference(upstream) if THIS_COURSE is None else upstream


STUDENT_CODE = ("run_llama.py", "llama.py", "rope.py", "optimizer.py", "classifier.py")
GENERATION_FILES = ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt")
DATASETS, SPLITS = ("sst", "cfimdb"), ("dev", "test")
ROPE_REFERENCE, OPTIMIZER_REFERENCE, SANITY_REFERENCE = (
    "rotary_embedding_actual.data", "optimizer_test.npy", "sanity_check.data")

COURSES = {
    "rmsnorm": Course(
        name="rmsnorm",
        description="the LUH course: RMSNorm, plain temperature sampling, AdamW without clipping, no LoRA",
        norm="rmsnorm", epsilon=0.0, max_grad_norm=None,
        methods=(
            Method("prompt", "prompting", accuracy=(("sst", "dev", 0.213), ("sst", "test", 0.224),
                                                   ("cfimdb", "dev", 0.502))),
            Method("finetune", "finetuning", accuracy=(("sst", "dev", 0.414), ("sst", "test", 0.418),
                                                       ("cfimdb", "dev", 0.800))),
        ),
        solved=frozenset({"llama.py:LayerNorm._norm"}),
        references=((ROPE_REFERENCE, "rotary_embedding_actual.data"), (OPTIMIZER_REFERENCE, "optimizer_test.npy"),
                    (SANITY_REFERENCE, "sanity_check_rmsnorm.data")),
    ),
    "layernorm": Course(
        name="layernorm",
        description="the 2025 CMU course: LayerNorm, LoRA, epsilon sampling, AdamW with gradient clipping",
        norm="layernorm", epsilon=0.05, max_grad_norm=0.9,
        methods=(
            Method("prompt", "prompting", accuracy=(("sst", "dev", 0.237), ("sst", "test", 0.250),
                                                   ("cfimdb", "dev", 0.490))),
            Method("finetune", "finetuning", accuracy=(("sst", "dev", 0.411), ("sst", "test", 0.399),
                                                       ("cfimdb", "dev", 0.833))),
            Method("lora", "lora", module="lora.py", accuracy=(("sst", "dev", 0.275), ("sst", "test", 0.269),
                                                               ("cfimdb", "dev", 0.510))),
        ),
        references=((ROPE_REFERENCE, "rotary_embedding_actual.data"),
                    (OPTIMIZER_REFERENCE, "optimizer_test_clip0.9.npy"),
                    (SANITY_REFERENCE, "sanity_check_layernorm.data")),
    ),
}
DEFAULT_COURSE = "layernorm"  # what a tool assumes in the solution, where no course is set
# Methods of the solution that no course teaches (e.g. a future IA3): their modules never ship.
SOLUTION_ONLY_METHODS: tuple[Method, ...] = ()
# The reference answers to the courses' A+ menu (parameter-efficient methods, prompting, WiSE-FT,
# Mixout, decoding, continued pre-training) and the fast decoding path (it writes out a whole
# decoding step, Llama.generate's answer): solution-side modules that no skeleton ships, so the
# students who attempt an A+ item (or Llama.generate) do not find it done.
SOLUTION_ONLY_MODULES = ("ia3.py", "prompt_tuning.py", "prompting.py", "mixout.py", "wise_ft.py", "decoding.py",
                         "pretraining.py", "instruct_tuning.py", "architectures.py", "fast_decode.py")


def here() -> list[Course]:
    """The courses this copy of the code has: both in the solution, one in a skeleton."""
    return list(COURSES.values()) if THIS_COURSE is None else [COURSES[THIS_COURSE]]


def default() -> Course:
    """The course a tool checks when not told: this skeleton's, or DEFAULT_COURSE in the solution."""
    return COURSES[THIS_COURSE or DEFAULT_COURSE]


def shipped_options(options) -> tuple[str, ...]:
    """The `--option` values, out of the solution's `options` (in their order), that this copy
    offers: all of them in the solution, the course's own in a skeleton."""
    if THIS_COURSE is None:
        return tuple(options)
    return tuple(option for option in options if option in COURSES[THIS_COURSE].options)


def output_name(option: str) -> str:
    """The word an option's prediction files carry, <dataset>-<split>-WORD-output.txt: the course
    methods' own (prompt -> prompting, finetune -> finetuning), else the option's name."""
    words = {method.option: method.output for method in all_methods()}
    return words.get(option, option)


def all_methods() -> list[Method]:
    return [method for c in COURSES.values() for method in c.methods] + list(SOLUTION_ONLY_METHODS)


def method_modules() -> frozenset[str]:
    """Every file that belongs to one method (lora.py) or to the A+ work: a skeleton ships only
    its course's own methods' files."""
    return frozenset(method.module for method in all_methods() if method.module) | set(SOLUTION_ONLY_MODULES)
