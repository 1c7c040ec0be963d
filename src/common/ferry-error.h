/* ferry — error domain shared by every component.
 *
 * Codes map onto HTTP statuses in the API (see ferry_error_http_status()),
 * so an error raised deep in the agent reaches the CLI with its meaning
 * intact.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define FERRY_ERROR (ferry_error_quark ())
GQuark ferry_error_quark (void);

typedef enum {
  FERRY_ERROR_FAILED,           /* internal failure, 500 */
  FERRY_ERROR_INVALID_ARGUMENT, /* bad input; message names the field, 400 */
  FERRY_ERROR_NOT_FOUND,        /* unknown VM/job, 404 */
  FERRY_ERROR_CONFLICT,         /* wrong state for the request, 409 */
  FERRY_ERROR_TOO_LARGE,        /* input over a size bound, 413 */
  FERRY_ERROR_UNAVAILABLE,      /* a peer or QEMU cannot be reached, 503 */
  FERRY_ERROR_PERMISSION,       /* certificate or access refused, 403 */
  FERRY_ERROR_TIMEOUT,          /* a deadline passed, 504 */
  FERRY_ERROR_QEMU,             /* QEMU answered with an error, 502 */
  FERRY_ERROR_NO_SPACE,         /* a pool or disk is out of space, 507 */
} FerryErrorCode;

guint ferry_error_http_status (const GError *error);
FerryErrorCode ferry_error_code_from_http_status (guint status);
const char *ferry_error_code_to_string (FerryErrorCode code);
FerryErrorCode ferry_error_code_from_string (const char *name);

G_END_DECLS
