// midtrain: stage 1.5 (mid-training) over the shared trainer (common/trainer.h).
#include "../common/trainer.h"

int main(int argc, char **argv) { return trainer_main("midtrain", argc, argv); }
