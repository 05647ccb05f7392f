"""What stands on the assignment: the command line's option families (cli), the one training
loop (training), the classification and instruction-tuning drivers (classify, instruct), the A+
methods (methods), pre-training and its ablations (pretraining), fast and quantised inference
(inference) and the tools to look inside (tools).

Imports point down, cli > classify | instruct | pretraining | tools > methods > inference > training,
the drivers sharing what supervised runs need through training/supervised.py; everything here stands
above the root modules (tests/test_layers.py checks it, with import-linter and .importlinter)."""
