// The validation step of parse_train_args (train_args.h), private to train_args*.cpp.
#pragma once
#include "train/train_args.h"

namespace oar {

// Checks the arguments together, in a fixed order (the first broken rule is the error: oar::Error naming the file
// or flag that set the key), and fills in the settings that depend on others (PaddleNLP's __post_init__: do_eval,
// evaluation_strategy, metric_for_best_model, greater_is_better), with notes and warnings into rep when given.
void validate_train_args(TrainArgs& a, ArgsReport* rep, int world_size);

}  // namespace oar
