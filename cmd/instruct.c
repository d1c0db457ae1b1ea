// instruct: stage 2 (instruction tuning) over the shared trainer (common/trainer.h).
#include "../common/trainer.h"

int main(int argc, char **argv) { return trainer_main("instruct", argc, argv); }
