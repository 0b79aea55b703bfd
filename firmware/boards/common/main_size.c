/* The smallest application around the model: what flash and RAM figures are measured on.
 * Only the model, its kernels and the startup code link in (no printf, no test vectors); the
 * input and output live in the model's arena, so RAM is the arena and little else. */
#include "model.h"

static volatile int8_t sample, result;  /* stand-ins for a sensor and an actuator */

int main(void)
{
    for (;;) {
        int8_t *in = vs_model_input();
        for (unsigned i = 0; i < VS_INPUT_SIZE; ++i) in[i] = sample;
        vs_model_invoke();
        result = vs_model_output()[0];
    }
}
