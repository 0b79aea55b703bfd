/* The smallest application around the model: what flash and RAM figures are measured on.
 * Only the model, its kernels and the startup code link in (no printf, no test vectors). */
#include "model.h"

static int8_t input[VS_INPUT_SIZE];
static int8_t output[VS_OUTPUT_SIZE];

int main(void)
{
    for (;;) vs_model_run(input, output);
}
