/* Regenerates the G.722 reference vectors in this folder with SpanDSP (Debian libspandsp-dev).
 * Build and run from the repository root:  tests/data/g722/regenerate.sh
 * For each signal NAME it writes, 16-bit little-endian PCM at 16 kHz, one byte per G.722 code:
 *   NAME.pcm      the input signal
 *   NAME.g722     SpanDSP's 64 kbit/s encoding of NAME.pcm (one fresh encoder, one call)
 *   NAME.dec.pcm  SpanDSP's decoding of NAME.g722 (one fresh decoder, one call)
 * and random.g722 / random.dec.pcm: arbitrary codes (every bit pattern the decoder can meet)
 * and their reference decoding. Signals come from integer arithmetic and an LCG except the
 * sine-based ones, which are rounded once here and stored, so the Rust tests never recompute them. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spandsp.h>

#define RATE 16000
#define LEN RATE /* one second of each signal */

static uint32_t lcg_state = 12345;
static uint32_t lcg(void) { lcg_state = lcg_state * 1103515245u + 12345u; return lcg_state >> 8; }

static void write_file(const char *dir, const char *name, const char *ext, const void *p, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s%s", dir, name, ext);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) { perror(path); exit(1); }
}

/* The machine is little-endian (x86-64/arm64); the files are little-endian by that. */
static void encode_and_decode(const char *dir, const char *name, const int16_t *pcm, int n) {
    uint8_t codes[LEN];
    int16_t dec[2 * LEN];
    g722_encode_state_t *enc = g722_encode_init(NULL, 64000, 0);
    g722_decode_state_t *de = g722_decode_init(NULL, 64000, 0);
    int nb = g722_encode(enc, codes, pcm, n);
    int ns = g722_decode(de, dec, codes, nb);
    write_file(dir, name, ".pcm", pcm, (size_t) n * 2);
    write_file(dir, name, ".g722", codes, (size_t) nb);
    write_file(dir, name, ".dec.pcm", dec, (size_t) ns * 2);
    g722_encode_free(enc);
    g722_decode_free(de);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : ".";
    static int16_t pcm[LEN];
    int i;

    memset(pcm, 0, sizeof pcm);
    encode_and_decode(dir, "silence", pcm, LEN);

    for (i = 0; i < LEN; i++) /* 1 kHz at -6 dBFS plus 5.5 kHz at -12 dBFS: both sub-bands busy */
        pcm[i] = (int16_t) lrint(16384.0 * sin(2 * M_PI * 1000.0 * i / RATE)
                                 + 8192.0 * sin(2 * M_PI * 5500.0 * i / RATE));
    encode_and_decode(dir, "tones", pcm, LEN);

    for (i = 0; i < LEN; i++) { /* linear sweep 50 Hz -> 7950 Hz at -3 dBFS */
        double t = (double) i / RATE;
        pcm[i] = (int16_t) lrint(23197.0 * sin(2 * M_PI * (50.0 * t + 0.5 * 7900.0 * t * t)));
    }
    encode_and_decode(dir, "sweep", pcm, LEN);

    for (i = 0; i < LEN; i++) /* white noise over the full 16-bit range */
        pcm[i] = (int16_t) (uint16_t) lcg();
    encode_and_decode(dir, "noise", pcm, LEN);

    for (i = 0; i < LEN; i++) /* full-scale 500 Hz square: clipping and the largest steps */
        pcm[i] = ((i / 16) % 2) ? INT16_MIN : INT16_MAX;
    encode_and_decode(dir, "square", pcm, LEN);

    {
        uint8_t codes[LEN / 2];
        int16_t dec[LEN];
        g722_decode_state_t *de = g722_decode_init(NULL, 64000, 0);
        for (i = 0; i < LEN / 2; i++)
            codes[i] = (uint8_t) lcg();
        int ns = g722_decode(de, dec, codes, LEN / 2);
        write_file(dir, "random", ".g722", codes, LEN / 2);
        write_file(dir, "random", ".dec.pcm", dec, (size_t) ns * 2);
        g722_decode_free(de);
    }
    return 0;
}
