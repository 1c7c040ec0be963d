/* The body of a warm pass (POST …/incoming/UUID/pass): what the source
 * tells the destination to pull, checked as any peer's input. */
#include <string.h>

#include <glib.h>

#include "agent.h"
#include "jsonutil.h"

static gboolean
parse (const char *text, FerryWarmPass *pass, GError **error)
{
  g_autoptr (JsonObject) object = ferry_json_parse_object (text, strlen (text), 65536, error);
  return object != NULL && mig_warm_pass_parse (object, pass, error);
}

static void
test_dirty_bytes_said_or_not (void)
{
  g_autoptr (GError) error = NULL;
  FerryWarmPass pass;
  g_assert_true (parse ("{\"pass\": 3, \"disks\": ["
                        "{\"index\": 0, \"port\": 49152, \"export\": \"disk0\", \"bitmap\": \"b-2\", \"dirty_bytes\": 0},"
                        "{\"index\": 1, \"port\": 49152, \"export\": \"disk1\", \"bitmap\": \"b-2\", "
                        "\"dirty_bytes\": 59768832},"
                        "{\"index\": 2, \"port\": 49152, \"export\": \"disk2\", \"bitmap\": \"b-2\"}]}",
                        &pass, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (pass.n_disks, ==, 3);
  g_assert_cmpint (pass.disks[0].dirty_bytes, ==, 0);
  g_assert_cmpint (pass.disks[1].dirty_bytes, ==, 59768832);
  g_assert_cmpint (pass.disks[2].dirty_bytes, ==, -1); /* an older source says nothing */
  g_assert_cmpstr (pass.disks[1].bitmap, ==, "b-2");

  /* A full pass has no bitmap: a count without one means nothing. */
  g_assert_true (parse ("{\"pass\": 1, \"disks\": [{\"index\": 0, \"port\": 1, \"export\": \"disk0\", "
                        "\"dirty_bytes\": 5}]}", &pass, &error));
  g_assert_cmpint (pass.disks[0].dirty_bytes, ==, -1);
}

static void
test_bad_dirty_bytes_named (void)
{
  const char *bad[] = { "-1", "\"many\"", "1.5", "true", NULL };
  for (guint i = 0; bad[i] != NULL; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *text = g_strdup_printf ("{\"pass\": 2, \"disks\": [{\"index\": 0, \"port\": 1, \"export\": "
                                               "\"disk0\", \"bitmap\": \"b-1\", \"dirty_bytes\": %s}]}", bad[i]);
      FerryWarmPass pass;
      g_assert_false (parse (text, &pass, &error));
      g_assert_nonnull (error);
      g_assert_nonnull (strstr (error->message, "disks[0].dirty_bytes"));
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/warm-pass/dirty-bytes", test_dirty_bytes_said_or_not);
  g_test_add_func ("/warm-pass/bad-dirty-bytes", test_bad_dirty_bytes_named);
  return g_test_run ();
}
