"""What stands on the assignment: the command line's option families (cli), the one training
loop (training), the classification and instruction-tuning drivers (classify, instruct), the A+
methods (methods), pre-training and its ablations (pretraining), fast and quantised inference
(inference) and the tools to look inside (tools).

Imports point down, cli > instruct > classify | pretraining | tools > methods > inference > training
(instruct evaluates by classifying), and everything here stands above the root modules
(tests/test_layers.py checks it, with import-linter and .importlinter)."""
