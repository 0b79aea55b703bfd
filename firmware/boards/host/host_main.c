/* The model and kernels on the build machine (make host), under AddressSanitizer and
 * UndefinedBehaviorSanitizer: same test vectors, same "VS-OUT" lines as the firmware. It calls
 * vs_model_run (the copying API); the firmware's harness writes into vs_model_input(). */
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "vs_vectors.h"

int main(void)
{
    static int8_t output[VS_OUTPUT_SIZE];
    for (unsigned i = 0; i < VS_NUM_VECTORS; ++i) {
        vs_model_run(vs_vectors + i * VS_INPUT_SIZE, output);
        printf("VS-OUT %u ", i);
        for (unsigned j = 0; j < VS_OUTPUT_SIZE; ++j) printf("%02x", (unsigned)(uint8_t)output[j]);
        printf("\n");
    }
    printf("VS-END\n");
    return 0;
}
