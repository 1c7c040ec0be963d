/* ferry agent — predicting a live migration and choosing its strategy.
 *
 * The model is pre-copy's own arithmetic: pass 1 sends the guest's
 * resident memory at the link's rate; each later pass sends what the guest
 * dirtied during the previous one; QEMU stops the guest once the rest fits
 * in the downtime limit. If the guest dirties as fast as the link carries,
 * no pass shrinks and pre-copy never ends.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  gint64 ram_bytes;          /* guest RAM size */
  gint64 resident_bytes;     /* pages the guest touched (non-zero candidates) */
  double dirty_bytes_per_s;  /* measured dirty rate */
  double link_bytes_per_s;   /* measured throughput to the destination */
  gint64 downtime_limit_ms;
  gint64 max_passes;         /* stop predicting after this many */
} FerryPlanInputs;

typedef struct {
  gboolean converges;
  gint64 passes;
  double total_s;            /* start to switchover complete */
  double downtime_ms;        /* predicted stop-and-copy time */
  gint64 bytes;              /* predicted bytes on the wire */
  double first_pass_s;
} FerryPrediction;

/* Pure: the same inputs give the same prediction (unit-tested). */
void ferry_predict_precopy (const FerryPlanInputs *inputs, FerryPrediction *prediction);

/* Post-copy needs: one pass over the resident memory, then the guest
 * moves and the rest follows on demand. */
void ferry_predict_postcopy (const FerryPlanInputs *inputs, double switch_after_s,
                             FerryPrediction *prediction);

G_END_DECLS
