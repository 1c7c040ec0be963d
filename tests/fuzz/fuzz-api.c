/* libFuzzer harness: API request bodies (untrusted JSON from clients and
 * peer agents) through the agent's own validators.
 *
 * Build: CC=clang meson setup B -Dfuzzing=true -Db_sanitize=address,undefined \
 *          -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
 */
#include <stdint.h>
#include <stdlib.h>

#include "agent.h"
#include "jsonutil.h"

static void
check_error (GError *error)
{
  /* A refusal must say what is wrong: a FERRY_ERROR with a message. */
  if (error->domain != FERRY_ERROR || error->message == NULL || error->message[0] == '\0')
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) object = ferry_json_parse_object ((const char *) data, size,
                                                           FERRY_API_MAX_BODY, &error);
  if (object == NULL)
    {
      check_error (error);
      return 0;
    }

  g_autofree char *dest = NULL;
  FerryMigrateOptions options;
  if (!ferry_migrate_options_parse (object, &dest, &options, &error))
    {
      check_error (error);
      g_clear_error (&error);
    }
  else if (dest == NULL || options.max_downtime_ms < 1 || options.bandwidth_mib < 0)
    abort ();

  g_autofree char *uuid = NULL;
  g_autofree char *source = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;
  FerryMigrateOptions incoming = { 0 };
  if (!mig_dst_parse_incoming_request (object, &uuid, &spec, &incoming, &source, &error))
    check_error (error);
  else if (spec == NULL || !g_uuid_string_is_valid (uuid))
    abort ();
  g_clear_error (&error);

  FerryWarmPass pass;
  if (!mig_warm_pass_parse (object, &pass, &error))
    check_error (error);
  else if (pass.pass < 1 || pass.n_disks == 0 || pass.n_disks > FERRY_SPEC_MAX_DISKS)
    abort ();
  return 0;
}
