# Included by scripts/sanitize.sh through -DCMAKE_PROJECT_INCLUDE (CMake runs it at the end of the
# top-level project() call): settings that only the sanitized build needs, kept out of
# CMakeLists.txt so that the regular build is untouched.
#
# The sanitized build is a unity build (several sources per translation unit): on 2 cores it cuts
# the ASan+UBSan build from ~15 minutes to a few, because most of a translation unit's time here
# goes into LibTorch's templates, which a unity translation unit instantiates once for all its
# sources. The library and the CLI use CMake's batches (CMAKE_UNITY_BUILD_BATCH_SIZE, set by
# sanitize.sh).
#
# The test sources are put into explicit groups instead, because several of them define the same
# helper in an anonymous namespace, which is fine in separate translation units and a
# "redefinition" error in one. Pairs that must not share a group:
#   text_windows_test / tokenizer_test        read_file()
#   perplexity_test / layer_inspection_test   expect_rel_near()
#   perplexity_test / text_windows_test       kDefaultText
#   perplexity_test / sensitivity_test        kBatchingRelTol
#   compare_test / packed_model_test          temp_path()
# A test source in no group is compiled on its own (correct, only slower): add a new one to a
# group that does not clash with it.
set_source_files_properties(
  tests/perplexity_test.cpp tests/tokenizer_test.cpp tests/compare_test.cpp tests/quantize_test.cpp
  tests/seed_examples_test.cpp tests/torch_reference_test.cpp
  PROPERTIES UNITY_GROUP tests_a)
set_source_files_properties(
  tests/text_windows_test.cpp tests/layer_inspection_test.cpp tests/sensitivity_test.cpp
  tests/packed_model_test.cpp tests/error_metrics_test.cpp tests/variant_spec_test.cpp
  PROPERTIES UNITY_GROUP tests_b)
set_source_files_properties(
  tests/model_metadata_test.cpp tests/sha256_test.cpp tests/contract_model_test.cpp
  tests/distribution_metrics_test.cpp tests/default_model_test.cpp tests/fuzz_regression_test.cpp
  tests/softmax_row_kernel_test.cpp tests/hostile_inputs_test.cpp
  PROPERTIES UNITY_GROUP tests_c)

# The target does not exist yet: switch it to group mode once the top-level CMakeLists.txt is read.
function(quantppl_sanitize_unity_groups)
  if(TARGET quantppl_tests)
    set_target_properties(quantppl_tests PROPERTIES UNITY_BUILD_MODE GROUP)
  endif()
endfunction()
cmake_language(DEFER CALL quantppl_sanitize_unity_groups)
