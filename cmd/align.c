// align: stage 1 (adapter alignment) over the shared trainer (common/trainer.h).
#include "../common/trainer.h"

int main(int argc, char **argv) { return trainer_main("align", argc, argv); }
