# Included through -DCMAKE_PROJECT_INCLUDE (CMake runs it at the end of the top-level project()
# call) by the builds that CI makes once and throws away: the sanitized build (scripts/sanitize.sh)
# and the LibTorch 2.x build (scripts/setup_torch2.sh). Both also pass -DCMAKE_UNITY_BUILD=ON
# -DCMAKE_UNITY_BUILD_BATCH_SIZE=8. The regular build (scripts/setup.sh) includes it only for
# quantppl_tests, when configured with -DQUANTPPL_UNITY_TESTS=ON (scripts/test.sh does for a new
# build directory: CI's clean clone); its library and CLI stay one translation unit per source.
#
# A unity build compiles several sources as one translation unit. On 2 cores it cuts the ASan+UBSan
# build from ~15 minutes to a few, and the LibTorch 2.x build (C++20, larger headers) likewise,
# because most of a translation unit's time goes into LibTorch's templates, which a unity
# translation unit instantiates once for all its sources. The code compiled is the same.
#
# The library and the CLI use CMake's batches, except src/model/bpe_tokenizer.cpp: its Impl holds
# types from an anonymous namespace, which g++ flags (-Wsubobject-linkage) once the file shares a
# translation unit with others; on its own it is warning-free.
#
# The test sources are put into explicit groups instead, because several of them define the same
# helper in an anonymous namespace, which is fine in separate translation units and a
# "redefinition" error in one. Names that more than one test source defines, and where:
#   read_file()        text_windows, tokenizer, archive_integrity
#   expect_rel_near()  perplexity, layer_inspection
#   kDefaultText       perplexity, text_windows, methods/activation_capture, methods/calibration
#   kBatchingRelTol    perplexity, sensitivity, methods/calibration
#   temp_path()        compare, packed_model, methods/calibration, methods/calibration_file
#   temp_dir()         distribution_metrics, packed_model
#   read_bytes(), write_bytes()  packed_model, methods/calibration_file
#   error_of()         archive_integrity, hostile_inputs, model/bpe_tokenizer
#   error_for(), error_with()    causal_model, model_metadata
#   load_error()       causal_model, contract_model, packed_model
#   python_ids()       text_windows, tokenizer
#   Case, all_cases(), config_of()  quantize, quantize_fast_path (config_of also methods/awq, methods/gptq)
#   all_layer_names()  methods/activation_capture, methods/calibration
#   stats_of()         methods/apply_method, methods/awq
#   write_raw()        distribution_metrics, methods/awq, methods/gptq, methods/hqq
# so no two of a line share a group. A test source in no group is compiled on its own (correct,
# only slower): add a new one to a group that does not clash with it.
set_source_files_properties(src/model/bpe_tokenizer.cpp PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)

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
set_source_files_properties(
  tests/archive_integrity_test.cpp tests/causal_windows_test.cpp tests/early_stopping_test.cpp
  tests/enum_table_test.cpp tests/json_input_test.cpp tests/weight_backup_test.cpp
  tests/formats/format_table_test.cpp tests/formats/uniform_format_test.cpp
  PROPERTIES UNITY_GROUP tests_d)
set_source_files_properties(
  tests/causal_model_test.cpp tests/formats/float_formats_test.cpp tests/formats/block_formats_test.cpp
  tests/methods/hqq_test.cpp tests/methods/apply_method_test.cpp tests/quantize_fast_path_test.cpp
  PROPERTIES UNITY_GROUP tests_e)
set_source_files_properties(
  tests/methods/activation_capture_test.cpp tests/methods/gptq_test.cpp
  tests/methods/calibration_file_test.cpp tests/model/bpe_tokenizer_test.cpp
  PROPERTIES UNITY_GROUP tests_f)
set_source_files_properties(
  tests/methods/calibration_test.cpp tests/methods/awq_test.cpp
  PROPERTIES UNITY_GROUP tests_g)

# The target does not exist yet: switch it to group mode once the top-level CMakeLists.txt is read.
function(quantppl_unity_test_groups)
  if(TARGET quantppl_tests)
    set_target_properties(quantppl_tests PROPERTIES UNITY_BUILD_MODE GROUP)
  endif()
endfunction()
cmake_language(DEFER CALL quantppl_unity_test_groups)
